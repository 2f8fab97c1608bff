import ai.lowbit.Json
import ai.lowbit.LowbitEngine
import ai.lowbit.chat.ChatSession
import java.io.File

/**
 * Drives the app's ChatSession on the host JVM (tests/apps/test_android_jni.py).
 * Usage: ChatSessionCheck MODEL_DIR MODEL_LIB OUT TURN...: greedy replies to the turns, written
 * to OUT as a JSON array for the test to compare with the Python engine.
 */
fun main(args: Array<String>) {
    val engine = LowbitEngine(args[0], args[1], null)
    try {
        val session = ChatSession(engine, maxTokens = 12, temperature = 0.0)
        val replies = args.drop(3).map { turn ->
            val pieces = StringBuilder()
            val reply = session.send(turn) { pieces.append(it) }
            check(reply == pieces.toString()) { "the streamed pieces make the reply" }
            reply
        }
        File(args[2]).writeText(replies.joinToString(",", "[", "]") { Json.quote(it) })
    } finally {
        engine.close()
    }
}
