package org.llamaedge.core

/**
 * A stand-in for ExecuTorch's TextLLMRunner behind LlmModule, with its stop semantics: the
 * first piece comes from the prompt's prefill; the decode loop then clears the stop flag, and
 * after each piece it ends when stop() was called or the piece was an end-of-generation token.
 */
class ScriptedRunner(
    private val pieces: List<String>,
    private val ends: Set<String> = emptySet(),
    private val stats: String? = null,
    /** Called before each piece after the first with that piece's index (tests block here). */
    private val beforePiece: (Int) -> Unit = {},
) : LlmEngine {
    val calls = mutableListOf<String>()
    @Volatile var delivered = 0
    @Volatile private var stopFlag = false
    var failWith: EngineException? = null

    override fun load() {}

    override fun resetContext() {
        synchronized(calls) { calls += "reset" }
    }

    override fun generate(prompt: String, temperature: Double, listener: EngineListener) {
        synchronized(calls) { calls += "generate" }
        failWith?.let { throw it }
        if (pieces.isNotEmpty()) {
            listener.onPiece(pieces[0])
            delivered++
            stopFlag = false
            for (i in 1 until pieces.size) {
                beforePiece(i)
                listener.onPiece(pieces[i])
                delivered++
                if (stopFlag || pieces[i] in ends) break
            }
        }
        stats?.let(listener::onStats)
    }

    override fun stop() {
        synchronized(calls) { calls += "stop" }
        stopFlag = true
    }

    override fun close() {}

    fun count(call: String): Int = synchronized(calls) { calls.count { it == call } }
}
