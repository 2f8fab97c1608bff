package ai.lowbit;

/** Receives a request's reply, one JSON chunk at a time, on the thread that made the request. */
@FunctionalInterface
public interface ChunkListener {
    /**
     * One chunk: a "chat.completion.chunk" or "text_completion" object, the last with "usage",
     * or {"error": {...}}. An exception thrown here aborts the request and reaches its caller.
     */
    void onChunk(String chunkJson);
}
