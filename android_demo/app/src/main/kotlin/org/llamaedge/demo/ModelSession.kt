package org.llamaedge.demo

import org.llamaedge.core.CheckedModel
import org.llamaedge.core.Generator
import org.llamaedge.core.ModelFiles
import org.llamaedge.core.ModelLocator
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * The loaded model, kept for the life of the process (screens come and go) and reused while
 * its files are unchanged. All model work runs on one worker thread, in order; only
 * [cancel] is called from the UI thread.
 */
object ModelSession {
    val worker: ExecutorService = Executors.newSingleThreadExecutor { r -> Thread(r, "llama-edge-model") }

    class Loaded(val model: CheckedModel, val engine: ExecuTorchEngine, val generator: Generator) {
        /** Identity of the files as loaded: path, size and modification time of each. */
        val key = filesKey(model.files)
    }

    // Touched on the worker thread only.
    private var loaded: Loaded? = null

    @Volatile private var generator: Generator? = null

    private fun filesKey(f: ModelFiles) = listOf(f.program, f.tokenizer, f.appConfig)
        .joinToString("|") { "${it.absolutePath}:${it.length()}:${it.lastModified()}" }

    /** Whether [open] would load (slow) rather than reuse; worker thread. */
    fun needsLoad(files: ModelFiles): Boolean = loaded?.key != filesKey(files)

    /** Checks the files and loads them, or reuses the loaded model; worker thread. */
    fun open(files: ModelFiles): Loaded {
        loaded?.let { if (it.key == filesKey(files)) return it }
        val checked = ModelLocator.check(files)
        loaded?.engine?.close()
        loaded = null
        generator = null
        val engine = ExecuTorchEngine(files)
        try {
            engine.load()
        } catch (e: Exception) {
            engine.close()
            throw e
        }
        val gen = Generator(engine, checked.config.endOfGeneration.map { it.text }, checked.config.maxContext)
        return Loaded(checked, engine, gen).also {
            loaded = it
            generator = gen
        }
    }

    /** Stops the running generation, if any (any thread). */
    fun cancel() {
        generator?.cancel()
    }
}
