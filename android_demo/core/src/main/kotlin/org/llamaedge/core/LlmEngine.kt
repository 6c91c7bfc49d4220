package org.llamaedge.core

/**
 * What the app needs from a text-generation runtime; on the phone ExecuTorch's LlmModule
 * (app/ExecuTorchEngine.kt), in tests a scripted fake. One engine serves one request at a time.
 */
interface LlmEngine : AutoCloseable {
    /** Loads the program (slow; call off the UI thread). Throws [EngineException]. */
    fun load()

    /** Forgets the previous conversation: the next prompt starts at position 0. */
    fun resetContext()

    /**
     * Generates from a prompt string (special tokens written as text), streaming pieces to
     * [listener] on the calling thread; returns when generation ends. Throws [EngineException].
     */
    fun generate(prompt: String, temperature: Double, listener: EngineListener)

    /** Asks a running generate() to end after the current token; callable from any thread. */
    fun stop()
}

interface EngineListener {
    /** One streamed piece: a token's text (an end-of-generation token arrives as its text). */
    fun onPiece(text: String)

    /** The runner's statistics JSON, once per generate(). */
    fun onStats(json: String)
}

/** A runtime failure with ExecuTorch's error code (runtime/core/error.h). */
class EngineException(val code: Int, message: String, cause: Throwable? = null) : Exception(message, cause)

/** ExecuTorch error codes as messages a user can act on. */
object RuntimeErrors {
    const val INVALID_STATE = 0x02
    const val NOT_SUPPORTED = 0x10
    const val INVALID_ARGUMENT = 0x12
    const val OPERATOR_MISSING = 0x14
    const val NOT_FOUND = 0x20
    const val MEMORY_ALLOCATION_FAILED = 0x21
    const val ACCESS_FAILED = 0x22
    const val INVALID_PROGRAM = 0x23
    const val DELEGATE_INVALID_COMPATIBILITY = 0x30

    fun describe(code: Int, detail: String, maxContext: Int? = null): String = when (code) {
        INVALID_ARGUMENT -> "The runner refused the request: the prompt may be longer than the model's " +
            "context${maxContext?.let { " of $it tokens" } ?: ""}; shorten the text. ($detail)"
        OPERATOR_MISSING, DELEGATE_INVALID_COMPATIBILITY, NOT_SUPPORTED ->
            "This ExecuTorch library cannot run the program ($detail): the app's executorch-android " +
                "version must match the executorch that exported model.pte."
        INVALID_PROGRAM -> "model.pte is not a valid ExecuTorch program ($detail); export it again with " +
            "llama-export --target xnnpack and push it again."
        NOT_FOUND, ACCESS_FAILED -> "A model file could not be read ($detail); check the paths in Settings."
        MEMORY_ALLOCATION_FAILED -> "Out of memory while running the model ($detail); close other apps or " +
            "use a smaller model."
        else -> "ExecuTorch error 0x${code.toString(16)}: $detail"
    }
}
