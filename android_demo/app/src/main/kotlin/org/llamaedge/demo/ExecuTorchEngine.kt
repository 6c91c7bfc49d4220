package org.llamaedge.demo

import org.llamaedge.core.EngineException
import org.llamaedge.core.EngineListener
import org.llamaedge.core.LlmEngine
import org.llamaedge.core.ModelFiles
import org.llamaedge.core.RuntimeErrors
import org.pytorch.executorch.ExecutorchRuntimeException
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmGenerationConfig
import org.pytorch.executorch.extension.llm.LlmModule
import org.pytorch.executorch.extension.llm.LlmModuleConfig

/**
 * The one file that touches ExecuTorch: its LlmModule (executorch-android 1.4+ API, the Kotlin
 * classes with LlmModuleConfig / LlmGenerationConfig builders) as core's [LlmEngine].
 *
 * No BOS is added by the module (numBos 0): the prompt string carries the chat format's BOS as
 * text (Llama 3) or has none (ChatML), and the runner's tokenizer turns it into the token. The
 * module ignores LlmGenerationConfig's maxNewTokens, so core's Generator caps the output by
 * counting pieces and calling [stop].
 */
class ExecuTorchEngine(files: ModelFiles) : LlmEngine {
    private val module: LlmModule = runtime {
        LlmModule(
            LlmModuleConfig.create()
                .modulePath(files.program.path)
                .tokenizerPath(files.tokenizer.path)
                .dataPath(null)
                .modelType(LlmModuleConfig.MODEL_TYPE_TEXT)
                .temperature(0f)
                .numBos(0)
                .numEos(0)
                .loadMode(LlmModuleConfig.LOAD_MODE_MMAP)
                .build()
        )
    }

    override fun load() = runtime { module.load() }

    override fun resetContext() = runtime { module.resetContext() }

    override fun generate(prompt: String, temperature: Double, listener: EngineListener) {
        var reported: String? = null
        val config = LlmGenerationConfig.create()
            .echo(false)
            .temperature(temperature.toFloat())
            .numBos(0)
            .numEos(0)
            .build()
        val callback = object : LlmCallback {
            override fun onResult(result: String) = listener.onPiece(result)

            override fun onStats(stats: String) = listener.onStats(stats)

            override fun onError(errorCode: Int, message: String) {
                reported = message
            }
        }
        try {
            module.generate(prompt, config, callback)
        } catch (e: ExecutorchRuntimeException) {
            throw EngineException(e.errorCode, reported ?: e.message ?: "", e)
        }
    }

    override fun stop() = module.stop()

    override fun close() = module.close()

    private fun <T> runtime(block: () -> T): T = try {
        block()
    } catch (e: ExecutorchRuntimeException) {
        throw EngineException(e.errorCode, e.message ?: "", e)
    } catch (e: IllegalArgumentException) {
        // LlmModule checks that both files exist and are readable before loading.
        throw EngineException(RuntimeErrors.NOT_FOUND, e.message ?: "", e)
    }
}
