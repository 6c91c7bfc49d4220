package org.llamaedge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

class ModelLocatorTest {
    @get:Rule val tmp = TemporaryFolder()

    private val smolConfig = SharedVectorsTest.vectors.getValue("models")
        .let { (it as kotlinx.serialization.json.JsonObject).getValue("smollm2").toString() }

    /** A file shaped like a .pte: 'ET' identifier, 'eh00' extended header, program and segment
     * sizes, then `size` bytes in all. */
    private fun pte(size: Int, programSize: Long = 64, segmentBase: Long = 64, segmentSize: Long = size - 64L): ByteArray {
        val b = ByteBuffer.allocate(size).order(ByteOrder.LITTLE_ENDIAN)
        b.putInt(0x1C).put("ET12".toByteArray()).put("eh00".toByteArray()).putInt(32)
        b.putLong(programSize).putLong(segmentBase).putLong(segmentSize)
        return b.array()
    }

    private fun model(
        program: ByteArray? = pte(256),
        config: String? = smolConfig,
        tokenizer: String? = """{"added_tokens":[{"content":"<|im_start|>"},{"content":"<|im_end|>"},{"content":"<|endoftext|>"}]}""",
        sidecarBytes: Long? = null,
    ): File {
        val dir = tmp.newFolder()
        program?.let { File(dir, "model.pte").writeBytes(it) }
        config?.let { File(dir, AppConfig.FILE_NAME).writeText(it) }
        tokenizer?.let { File(dir, "tokenizer.json").writeText(it) }
        sidecarBytes?.let { File(dir, "llama_edge.json").writeText("""{"format":"llama-edge-pte","bytes":$it}""") }
        return dir
    }

    private fun refused(fragment: String, dir: File, tokenizer: String? = null) {
        try {
            ModelLocator.check(ModelLocator.resolve(dir.path, tokenizer))
            fail("accepted; expected '$fragment'")
        } catch (e: EdgeError) {
            assertTrue(e.message!!, e.message!!.contains(fragment))
        }
    }

    @Test
    fun aCompleteModelDirectoryIsAccepted() {
        val dir = model(sidecarBytes = 256)
        val byDir = ModelLocator.check(ModelLocator.resolve(dir.path))
        assertEquals(ChatFormat.CHATML, byDir.config.chatFormat)
        val byFile = ModelLocator.resolve(File(dir, "model.pte").path, "  ")
        assertEquals(File(dir, "tokenizer.json").absolutePath, byFile.tokenizer.absolutePath)
        val other = File(tmp.newFolder(), "tok.json").path
        assertEquals(other, ModelLocator.resolve(dir.path, other).tokenizer.path)
    }

    @Test
    fun missingFilesAreNamed() {
        refused("model.pte: not found", model(program = null))
        refused("llama_edge_app.json: not found", model(config = null))
        refused("tokenizer.json: not found", model(tokenizer = null))
        refused("is a directory", model(), tmp.newFolder().path)
    }

    @Test
    fun foreignAndDamagedProgramsAreRefused() {
        refused("not an ExecuTorch program", model(program = "<html>not found</html>".toByteArray()))
        refused("not an ExecuTorch program", model(program = ByteArray(0)))
        refused("extended header", model(program = pte(256).also { it[8] = 'x'.code.toByte() }))
        refused("truncated (the program needs 999", model(program = pte(256, programSize = 999)))
        refused("truncated (its weights end at byte 320", model(program = pte(256, segmentSize = 256)))
        refused("llama_edge.json records 300", model(sidecarBytes = 300))
    }

    @Test
    fun badAppSettingsAndWrongTokenizersAreRefused() {
        refused("version 2", model(config = smolConfig.replace("\"version\":1", "\"version\":2")))
        refused("'chat_format'", model(config = smolConfig.replace("\"chatml\"", "\"alpaca\"")))
        refused("'max_context'", model(config = smolConfig.replace("\"max_context\":2048", "\"max_context\":\"2048\"")))
        refused("lacks the token <|im_start|>", model(tokenizer = """{"added_tokens":[{"content":"<|eot_id|>"}]}"""))
        refused("not a tokenizer.json", model(tokenizer = "<html></html>"))
    }
}
