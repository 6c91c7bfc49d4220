package org.llamaedge.core

import java.io.File
import java.io.IOException
import java.io.RandomAccessFile

/** The files of one exported model on the device: the program, its tokenizer and the app's
 * JSON (all three written by `llama-export ... --target xnnpack` into one directory). */
data class ModelFiles(val program: File, val tokenizer: File, val appConfig: File)

/** A model whose files passed [ModelLocator.check]. */
data class CheckedModel(val files: ModelFiles, val config: AppConfig)

/**
 * Finds and checks a model before ExecuTorch sees it, so a missing, truncated or foreign file is
 * a message naming the file and what to do rather than a runtime error code:
 * the program's 'ET' identifier and extended header ('eh00'), its program and segment sizes
 * against the file length, the size recorded in llama_edge.json, the app JSON, and a tokenizer
 * that holds the chat format's special tokens.
 */
object ModelLocator {
    const val PROGRAM = "model.pte"
    const val TOKENIZER = "tokenizer.json"
    const val SIDECAR = "llama_edge.json"

    /** `modelPath` is model.pte or the directory holding it; a blank `tokenizerPath` means the
     * tokenizer.json beside the program. The app JSON is always the one beside the program. */
    fun resolve(modelPath: String, tokenizerPath: String? = null): ModelFiles {
        val given = File(modelPath.trim())
        val program = if (given.isDirectory) File(given, PROGRAM) else given
        val dir = program.absoluteFile.parentFile ?: File(".")
        val tok = tokenizerPath?.trim().takeUnless { it.isNullOrEmpty() }?.let(::File) ?: File(dir, TOKENIZER)
        return ModelFiles(program, tok, File(dir, AppConfig.FILE_NAME))
    }

    fun check(files: ModelFiles): CheckedModel {
        checkProgram(files.program)
        val config = readConfig(files.appConfig)
        checkTokenizer(files.tokenizer, config)
        return CheckedModel(files, config)
    }

    private fun requireFile(f: File, what: String) {
        if (!f.exists()) throw EdgeError("$f: not found. Copy llama-export's xnnpack directory, which holds the $what, to the device (adb push; README, section Android).")
        if (!f.isFile) throw EdgeError("$f: is a directory, not the $what.")
        if (!f.canRead()) throw EdgeError("$f: cannot be read (permissions).")
    }

    private fun u32(b: ByteArray, at: Int): Long =
        (0 until 4).fold(0L) { acc, i -> acc or ((b[at + i].toLong() and 0xFF) shl (8 * i)) }

    private fun u64(b: ByteArray, at: Int): Long =
        (0 until 8).fold(0L) { acc, i -> acc or ((b[at + i].toLong() and 0xFF) shl (8 * i)) }

    private fun checkProgram(f: File) {
        requireFile(f, "program ($PROGRAM)")
        val size = f.length()
        val head = ByteArray(40)
        val n = try {
            RandomAccessFile(f, "r").use { it.read(head) }
        } catch (e: IOException) {
            throw EdgeError("$f: cannot be read (${e.message}).")
        }
        if (n < 32 || head[4] != 'E'.code.toByte() || head[5] != 'T'.code.toByte()) {
            throw EdgeError("$f: is not an ExecuTorch program (no 'ET' identifier at byte 4); export one with llama-export --target xnnpack.")
        }
        if (String(head, 8, 4, Charsets.US_ASCII) != "eh00") {
            throw EdgeError("$f: has no extended header ('eh00' at byte 8); export it again with llama-export --target xnnpack.")
        }
        val headerLength = u32(head, 12)
        val programSize = u64(head, 16)
        val segmentBase = u64(head, 24)
        val segmentSize = if (headerLength > 24 && n >= 40) u64(head, 32) else 0L
        if (programSize > size) {
            throw EdgeError("$f: is truncated (the program needs $programSize bytes, the file has $size); push it again.")
        }
        if (segmentBase > 0 && segmentBase + segmentSize > size) {
            throw EdgeError("$f: is truncated (its weights end at byte ${segmentBase + segmentSize}, the file has $size); push it again.")
        }
        val sidecar = File(f.absoluteFile.parentFile, SIDECAR)
        if (sidecar.isFile) {
            val recorded = JsonFields.parse(sidecar.readText(), sidecar.path).long("bytes")
            if (recorded != size) {
                throw EdgeError("$f: has $size bytes but $SIDECAR records $recorded; the copy is incomplete or from another export, push the directory again.")
            }
        }
    }

    private fun readConfig(f: File): AppConfig {
        requireFile(f, "app settings (${AppConfig.FILE_NAME})")
        return AppConfig.parse(f.readText(), f.path)
    }

    private fun checkTokenizer(f: File, config: AppConfig) {
        requireFile(f, "tokenizer ($TOKENIZER)")
        val text = f.readText()
        if (!text.trimStart().startsWith("{")) {
            throw EdgeError("$f: is not a tokenizer.json (not JSON); push the tokenizer.json exported with the model.")
        }
        val needed = when (config.chatFormat) {
            ChatFormat.CHATML -> listOf("<|im_start|>", "<|im_end|>")
            ChatFormat.LLAMA3 -> listOf("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
            ChatFormat.RAW -> emptyList()
        } + config.endOfGeneration.map { it.text }
        // Special tokens appear in tokenizer.json as JSON strings, with '"' and '\' escaped.
        val missing = needed.firstOrNull { "\"${it.replace("\\", "\\\\").replace("\"", "\\\"")}\"" !in text }
        if (missing != null) {
            throw EdgeError("$f: lacks the token $missing that this model needs; use the tokenizer.json exported with ${config.programFile}.")
        }
    }
}
