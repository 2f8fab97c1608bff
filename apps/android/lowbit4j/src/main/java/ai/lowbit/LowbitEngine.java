package ai.lowbit;

import java.nio.charset.StandardCharsets;
import java.util.Objects;

/**
 * One compiled model and one conversation, over lowbit's native engine (liblowbit_jni.so).
 *
 * <p>Requests are OpenAI JSON strings (apps/native/include/lowbit/engine.h); the reply streams to
 * a {@link ChunkListener} on the calling thread. Requests, {@link #reset()} and {@link #close()}
 * run one at a time; {@link #abort()} may be called from any thread, the listener included.
 */
public final class LowbitEngine implements AutoCloseable {
    static {
        System.loadLibrary("lowbit_jni");
    }

    private final Object handleLock = new Object(); // abort() against close()
    private long handle; // 0 once closed
    private boolean streaming; // a request of this engine is running (its listener may call in)

    /**
     * Loads a model.
     *
     * @param modelDir the MLC weight folder (a real folder, not an APK asset)
     * @param modelLib "system://PREFIX" for a model linked into liblowbit_jni.so, or a library file
     * @param optionsJson null or {"context_window": N, "check_md5": true}
     * @throws LowbitException naming what is wrong, in one line
     */
    public LowbitEngine(String modelDir, String modelLib, String optionsJson) throws LowbitException {
        handle = nativeCreate(utf8(modelDir, "modelDir"), utf8(modelLib, "modelLib"),
                optionsJson == null ? null : utf8(optionsJson, "optionsJson"));
    }

    /**
     * Streams the reply to an OpenAI chat completion request. A bad request or a failure sends one
     * error chunk, then throws; the engine stays usable.
     */
    public synchronized void chatCompletion(String requestJson, ChunkListener listener) throws LowbitException {
        run(requestJson, listener, true);
    }

    /** Streams the continuation of a raw prompt (an OpenAI completion request); errors as above. */
    public synchronized void completion(String requestJson, ChunkListener listener) throws LowbitException {
        run(requestJson, listener, false);
    }

    /** Stops the running request after its current token; a no-op when none runs or once closed. */
    public void abort() {
        synchronized (handleLock) {
            if (handle != 0) {
                nativeAbort(handle);
            }
        }
    }

    /** Forgets the conversation (the KV cache). */
    public synchronized void reset() {
        nativeReset(idle());
    }

    /** Frees the model; closing twice is harmless, any other call afterwards throws. */
    @Override
    public synchronized void close() {
        if (streaming) {
            throw new IllegalStateException("close() from a listener: call abort(), and close once the request returns");
        }
        long closing;
        synchronized (handleLock) {
            closing = handle;
            handle = 0;
        }
        if (closing != 0) {
            nativeFree(closing);
        }
    }

    private void run(String requestJson, ChunkListener listener, boolean chat) throws LowbitException {
        Objects.requireNonNull(listener, "listener");
        long engine = idle();
        streaming = true;
        try {
            nativeRun(engine, utf8(requestJson, "requestJson"), chat, listener);
        } finally {
            streaming = false;
        }
    }

    /** The handle, for a call that needs the engine open and no request of it running. */
    private long idle() {
        if (handle == 0) {
            throw new IllegalStateException("the engine is closed");
        }
        if (streaming) {
            throw new IllegalStateException("a listener cannot start a request or reset on its own engine");
        }
        return handle;
    }

    private static byte[] utf8(String text, String what) {
        return Objects.requireNonNull(text, what).getBytes(StandardCharsets.UTF_8);
    }

    private static native long nativeCreate(byte[] modelDir, byte[] modelLib, byte[] optionsJson) throws LowbitException;

    private static native void nativeRun(long engine, byte[] requestJson, boolean chat, ChunkListener listener)
            throws LowbitException;

    private static native void nativeAbort(long engine);

    private static native void nativeReset(long engine);

    private static native void nativeFree(long engine);
}
