package org.llamaedge.core

/**
 * The statistics JSON that ExecuTorch's LLM runner hands to LlmCallback.onStats after each
 * generate() (extension/llm/runner/stats.h, `stats_to_json_string`): token counts and
 * timestamps in SCALING_FACTOR_UNITS_PER_SECOND units (milliseconds). The rates are the runner's
 * own definitions: prompt tokens over (prompt evaluated - inference start), generated tokens
 * over (inference end - prompt evaluated); time to first token is first token - inference start.
 */
data class RunnerStats(
    val promptTokens: Long,
    val generatedTokens: Long,
    val modelLoadStartMs: Long,
    val modelLoadEndMs: Long,
    val inferenceStartMs: Long,
    val promptEvalEndMs: Long,
    val firstTokenMs: Long,
    val inferenceEndMs: Long,
    val unitsPerSecond: Long,
) {
    companion object {
        private const val SOURCE = "runner statistics"

        fun parse(json: String): RunnerStats {
            val f = JsonFields.parse(json, SOURCE)
            val units = f.longOrNull("SCALING_FACTOR_UNITS_PER_SECOND") ?: 1000L
            if (units <= 0) throw EdgeError("$SOURCE: SCALING_FACTOR_UNITS_PER_SECOND is $units")
            return RunnerStats(
                promptTokens = f.long("prompt_tokens"),
                generatedTokens = f.long("generated_tokens"),
                modelLoadStartMs = f.longOrNull("model_load_start_ms") ?: 0L,
                modelLoadEndMs = f.longOrNull("model_load_end_ms") ?: 0L,
                inferenceStartMs = f.long("inference_start_ms"),
                promptEvalEndMs = f.long("prompt_eval_end_ms"),
                firstTokenMs = f.long("first_token_ms"),
                inferenceEndMs = f.long("inference_end_ms"),
                unitsPerSecond = units,
            )
        }
    }

    private fun rate(tokens: Long, from: Long, to: Long): Double? =
        if (to > from) tokens.toDouble() / (to - from) * unitsPerSecond else null

    /** Prompt tokens per second, or null when the prompt took less than one time unit. */
    val prefillTokensPerSecond: Double? get() = rate(promptTokens, inferenceStartMs, promptEvalEndMs)

    /** Generated tokens per second, or null when the decode window is empty. */
    val decodeTokensPerSecond: Double? get() = rate(generatedTokens, promptEvalEndMs, inferenceEndMs)

    val timeToFirstTokenSeconds: Double get() = (firstTokenMs - inferenceStartMs).toDouble() / unitsPerSecond

    /** Model load time, when this generate() loaded the model (null after an explicit load). */
    val loadSeconds: Double?
        get() = if (modelLoadEndMs > modelLoadStartMs && modelLoadStartMs > 0)
            (modelLoadEndMs - modelLoadStartMs).toDouble() / unitsPerSecond else null
}
