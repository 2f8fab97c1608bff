package ai.lowbit.chat

import ai.lowbit.Json
import ai.lowbit.LowbitEngine

/**
 * A conversation with one engine. Each turn sends the whole history, as OpenAI clients do (the
 * engine reuses the KV cache of the common prefix), and streams the reply's text. It needs only
 * [LowbitEngine] and the JDK, so it runs, and is tested, on a plain JVM.
 */
class ChatSession(
    private val engine: LowbitEngine,
    private val maxTokens: Int = 512,
    private val temperature: Double = 0.7
) {
    private val messages = mutableListOf<Pair<String, String>>()

    /**
     * Sends [text] as the user's turn and hands each piece of the reply to [onText] as it comes;
     * returns the whole reply (cut short by [stop]). On an error the turn is dropped and the
     * exception (a LowbitException for the engine's) is thrown.
     */
    fun send(text: String, onText: (String) -> Unit): String {
        messages.add("user" to text)
        val reply = StringBuilder()
        try {
            engine.chatCompletion(request()) { chunk ->
                val piece = deltaContent(chunk)
                if (piece.isNotEmpty()) {
                    reply.append(piece)
                    onText(piece)
                }
            }
        } catch (e: Exception) {
            messages.removeAt(messages.size - 1)
            throw e
        }
        messages.add("assistant" to reply.toString())
        return reply.toString()
    }

    /** Ends the running reply after its current token; callable from any thread. */
    fun stop() = engine.abort()

    /** Starts a new conversation. */
    fun clear() {
        messages.clear()
        engine.reset()
    }

    private fun request(): String = messages.joinToString(
        separator = ",",
        prefix = "{\"messages\":[",
        postfix = "],\"max_tokens\":$maxTokens,\"temperature\":$temperature}"
    ) { (role, content) -> "{\"role\":${Json.quote(role)},\"content\":${Json.quote(content)}}" }
}

/** The text of a chat chunk's delta ("" for the role-only first chunk and the usage chunk). */
internal fun deltaContent(chunk: String): String {
    val choices = (Json.parse(chunk) as Map<*, *>)["choices"] as? List<*> ?: return ""
    val delta = (choices.firstOrNull() as? Map<*, *>)?.get("delta") as? Map<*, *> ?: return ""
    return delta["content"] as? String ?: ""
}
