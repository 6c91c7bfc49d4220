package org.llamaedge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class TaskSpecTest {
    private val text = SharedVectorsTest.repoFile("llamaedge.tasks").readText()
    private val spec = TaskSpec.parse(text)

    private fun refused(fragment: String, block: () -> Unit) {
        try {
            block()
            fail("accepted; expected an error with '$fragment'")
        } catch (e: EdgeError) {
            assertTrue(e.message!!, e.message!!.contains(fragment))
        }
    }

    @Test
    fun theRepositorysTaskFileIsRead() {
        assertEquals(listOf("formal", "casual", "concise", "simple", "bullet"), spec.styles.keys.toList())
        assertTrue(spec.defaults.getValue(Task.SUMMARIZE).maxNewTokens > 0)
        assertTrue(spec.defaults.getValue(Task.REWRITE).maxNewTokens > 0)
        assertTrue(spec.userContent(Task.SUMMARIZE, " doc ").endsWith("\n\ndoc"))
    }

    @Test
    fun theByteCapCountsUtf8Bytes() {
        val max = spec.maxInputBytes
        spec.prepareInput("é".repeat(max / 2))
        refused("bytes") { spec.prepareInput("é".repeat(max / 2) + "x") }
    }

    @Test
    fun malformedTaskFilesNameTheField() {
        refused("tasks.rewrite.prompt") {
            TaskSpec.parse(text.replace("in a {style} style", "in a {tone} style"))
        }
        refused("not a llama-edge-tasks v1 file") { TaskSpec.parse(text.replace("\"version\": 1", "\"version\": 2")) }
        refused("'limits.max_style_chars'") { TaskSpec.parse(text.replace("\"max_style_chars\": 80", "\"max_style_chars\": \"80\"")) }
        refused("not valid JSON") { TaskSpec.parse(text.dropLast(3)) }
    }

    @Test
    fun bracesInTheTemplateFollowPythonsFormat() {
        val edited = text.replace("in a {style} style", "in a {style} style {{braces}}")
        val content = TaskSpec.parse(edited).userContent(Task.REWRITE, "{text}", "{style}")
        assertTrue(content, content.contains("in a {style} style {braces}") && content.endsWith("\n\n{text}"))
    }
}
