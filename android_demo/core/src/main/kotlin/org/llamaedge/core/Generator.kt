package org.llamaedge.core

import java.util.concurrent.atomic.AtomicReference

/** Why a generation ended. */
enum class FinishReason(val id: String) {
    /** The model produced an end-of-generation token. */
    EOS("eos"),
    /** The output cap (max new tokens) was reached. */
    LENGTH("length"),
    /** The user stopped it. */
    CANCELLED("cancelled"),
    /** The runner ended by itself without either: the context is full. */
    CONTEXT("context"),
}

data class GenerationRequest(val prompt: String, val maxNewTokens: Int, val temperature: Double) {
    init {
        if (prompt.isEmpty()) throw EdgeError("the prompt is empty")
        if (maxNewTokens < 1) throw EdgeError("Max new tokens must be at least 1 (got $maxNewTokens).")
        // ExecuTorch's token generator refuses temperatures outside [0, 1].
        if (temperature.isNaN() || temperature < 0.0 || temperature > 1.0) {
            throw EdgeError("Temperature must be between 0 and 1 (got $temperature); 0 is greedy.")
        }
    }
}

data class GenerationResult(
    /** The visible text: every piece before the end-of-generation token, at most the cap. */
    val text: String,
    val finish: FinishReason,
    /** Pieces kept (the cap counts these). */
    val pieces: Int,
    val stats: RunnerStats?,
)

/**
 * One request at a time on one engine:
 *
 *     IDLE --generate()--> RUNNING --(end token | cap | cancel()) + engine.stop()--> STOPPING
 *       ^                     |                                                       |
 *       +---- generate() returns (runner finished; context full if nothing else) -----+
 *
 * Every request starts from a reset context (the runner otherwise continues the previous
 * conversation). The output is capped by counting pieces and calling stop: LlmModule streams one
 * piece per token (the JNI layer holds back a token that ends inside a UTF-8 character and sends
 * it with the next, so such a pair counts once). An end-of-generation token arrives as a piece of
 * its own, equal to the token's text; it ends the text and is not shown. The runner clears its
 * stop flag when its decode loop starts, so a stop asked during the first piece is repeated on
 * every later piece until the runner returns; pieces after a stop are dropped.
 */
class Generator(
    private val engine: LlmEngine,
    endTokens: Collection<String>,
    /** The model's context, named in the error for a prompt the runner refuses. */
    private val maxContext: Int? = null,
) {
    private val ends = endTokens.toSet()
    private val lock = Any()
    @Volatile private var running = false
    private val finish = AtomicReference<FinishReason?>(null)

    val isRunning: Boolean get() = running

    /**
     * Runs [request] on the calling thread (not the UI thread), passing each visible piece to
     * [onText] as it arrives ([onText] runs inside the runtime's callback and must not throw).
     * [stopRequested] is asked at every piece: a Stop the user gave before this call started
     * (while the model loaded) ends the request at its first piece. Throws [EdgeError] for a
     * request that cannot run or a runtime failure; a cancelled request returns normally with
     * [FinishReason.CANCELLED].
     */
    fun generate(
        request: GenerationRequest,
        stopRequested: () -> Boolean = { false },
        onText: (String) -> Unit,
    ): GenerationResult {
        synchronized(lock) {
            if (running) throw EdgeError("A generation is already running; stop it first.")
            running = true
            finish.set(null)
        }
        val out = StringBuilder()
        var kept = 0
        var stats: RunnerStats? = null
        try {
            engine.resetContext()
            engine.generate(request.prompt, request.temperature, object : EngineListener {
                override fun onPiece(text: String) {
                    if (finish.get() == null && stopRequested()) end(FinishReason.CANCELLED)
                    if (finish.get() != null) {
                        engine.stop()
                        return
                    }
                    if (text in ends) {
                        end(FinishReason.EOS)
                        return
                    }
                    kept++
                    out.append(text)
                    onText(text)
                    if (kept >= request.maxNewTokens) end(FinishReason.LENGTH)
                }

                override fun onStats(json: String) {
                    // Statistics are informative: unreadable ones are left out, never thrown
                    // back through the runtime's callback.
                    stats = try {
                        RunnerStats.parse(json)
                    } catch (e: EdgeError) {
                        null
                    }
                }
            })
        } catch (e: EngineException) {
            if (finish.get() != FinishReason.CANCELLED) {
                throw EdgeError(RuntimeErrors.describe(e.code, e.message ?: "", maxContext))
            }
        } finally {
            synchronized(lock) { running = false }
        }
        return GenerationResult(out.toString(), finish.get() ?: FinishReason.CONTEXT, kept, stats)
    }

    private fun end(reason: FinishReason) {
        if (finish.compareAndSet(null, reason)) engine.stop()
    }

    /** Stops the running request (from any thread); nothing happens when none runs. */
    fun cancel() {
        synchronized(lock) { if (running) end(FinishReason.CANCELLED) }
    }
}
