package org.llamaedge.core

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.double
import kotlinx.serialization.json.int
import kotlinx.serialization.json.jsonArray
import kotlinx.serialization.json.jsonObject
import kotlinx.serialization.json.jsonPrimitive
import kotlinx.serialization.json.long
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.time.LocalDate
import java.time.format.DateTimeFormatter
import java.util.Locale

/**
 * The vectors llama-edge's Python side generates (tests/android_demo/vectors.json): the app must
 * build the very prompt strings whose tokens are the runtime's ids, refuse what the tasks
 * refuse, stop where the runtime stops and read the runner's statistics.
 */
class SharedVectorsTest {
    companion object {
        fun repoFile(property: String): File {
            val path = System.getProperty(property) ?: throw AssertionError("system property $property is not set")
            return File(path).also { assertTrue("$it is missing", it.isFile) }
        }

        val vectors: JsonObject by lazy {
            Json.parseToJsonElement(repoFile("llamaedge.vectors").readText()).jsonObject
        }
        val spec: TaskSpec by lazy { TaskSpec.parse(repoFile("llamaedge.tasks").readText()) }

        fun config(model: String): AppConfig =
            AppConfig.parse(vectors.getValue("models").jsonObject.getValue(model).toString(), model)

        fun str(e: JsonElement?): String? = if (e == null || e is JsonNull) null else e.jsonPrimitive.content
    }

    private fun list(key: String) = vectors.getValue(key).jsonArray.map { it.jsonObject }

    @Test
    fun promptStringsEqualThePythonSide() {
        val prompts = list("prompts")
        val formats = prompts.map { config(it.getValue("model").jsonPrimitive.content).chatFormat }.toSet()
        assertEquals(ChatFormat.entries.toSet(), formats)
        for (v in prompts) {
            val cfg = config(v.getValue("model").jsonPrimitive.content)
            val task = Task.of(v.getValue("task").jsonPrimitive.content)
            val date = v.getValue("date").jsonPrimitive.content
            val today = LocalDate.parse(date, DateTimeFormatter.ofPattern(cfg.deviceDatePattern, Locale.ENGLISH))
            val builder = PromptBuilder(cfg)
            val messages = spec.messages(task, str(v["text"])!!, str(v["style"]), str(v["system"]))
            val got = builder.build(messages, today)
            assertEquals("${cfg.name} $task ${str(v["text"])?.take(40)}", v.getValue("prompt").jsonPrimitive.content, got)
            if (cfg.llama3Preamble != null) assertEquals(date, builder.preambleDate(today))
        }
        assertTrue(prompts.size >= 30)
    }

    @Test
    fun inputsTheTasksRefuseAreRefused() {
        val errors = list("errors")
        assertTrue(errors.isNotEmpty())
        for (v in errors) {
            try {
                spec.messages(Task.of(v.getValue("task").jsonPrimitive.content), str(v["text"])!!, str(v["style"]))
                fail("accepted ${v["text"]} / ${v["style"]}; Python said ${v["python_error"]}")
            } catch (e: EdgeError) {
                assertTrue(e.message!!.isNotBlank())
            }
        }
    }

    @Test
    fun stopHandlingMatchesTheRuntime() {
        val stops = list("stops")
        assertTrue(stops.size >= 10)
        for (v in stops) {
            val cfg = config(v.getValue("model").jsonPrimitive.content)
            val ends = cfg.endOfGeneration.map { it.text }
            val pieces = v.getValue("pieces").jsonArray.map { it.jsonPrimitive.content }
            val runner = ScriptedRunner(pieces, ends.toSet())
            val shown = StringBuilder()
            val r = Generator(runner, ends).generate(
                GenerationRequest("p", v.getValue("max_new_tokens").jsonPrimitive.int, 0.0)
            ) { shown.append(it) }
            val what = "${cfg.name} $pieces"
            assertEquals(what, v.getValue("text").jsonPrimitive.content, r.text)
            assertEquals(what, r.text, shown.toString())
            assertEquals(what, v.getValue("finish").jsonPrimitive.content, r.finish.id)
            assertEquals(what, v.getValue("kept").jsonPrimitive.int, r.pieces)
        }
    }

    @Test
    fun runnerStatisticsAreRead() {
        val stats = list("stats")
        assertTrue(stats.isNotEmpty())
        fun near(what: String, want: JsonElement?, got: Double?) {
            if (want == null || want is JsonNull) return assertNull(what, got)
            val w = want.jsonPrimitive.double
            assertTrue("$what: $got != $w", got != null && Math.abs(got - w) <= 1e-9 * Math.max(1.0, Math.abs(w)))
        }
        for (v in stats) {
            val name = v.getValue("name").jsonPrimitive.content
            val s = RunnerStats.parse(v.getValue("json").jsonPrimitive.content)
            assertEquals(name, v.getValue("prompt_tokens").jsonPrimitive.long, s.promptTokens)
            assertEquals(name, v.getValue("generated_tokens").jsonPrimitive.long, s.generatedTokens)
            near("$name prefill", v["prefill_tok_s"], s.prefillTokensPerSecond)
            near("$name decode", v["decode_tok_s"], s.decodeTokensPerSecond)
            near("$name ttft", v["ttft_s"], s.timeToFirstTokenSeconds)
            near("$name load", v["load_s"], s.loadSeconds)
        }
    }
}
