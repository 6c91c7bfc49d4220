package org.llamaedge.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit

class GeneratorTest {
    private val end = "<|im_end|>"

    private fun request(max: Int = 100) = GenerationRequest("<|im_start|>user\nhi<|im_end|>\n", max, 0.0)

    @Test
    fun everyRequestStartsFromAResetContext() {
        val runner = ScriptedRunner(listOf("a", "b", end), setOf(end))
        val g = Generator(runner, listOf(end))
        g.generate(request()) {}
        g.generate(request()) {}
        assertEquals(listOf("reset", "generate", "stop", "reset", "generate", "stop"), runner.calls)
    }

    @Test
    fun aCapOfOneSurvivesTheRunnerClearingItsStopFlag() {
        // stop() during the first piece is forgotten when the decode loop starts: the next piece
        // must be dropped and the stop repeated.
        val runner = ScriptedRunner(listOf("one", " two", " three", " four"))
        val r = Generator(runner, listOf(end)).generate(request(max = 1)) {}
        assertEquals("one", r.text)
        assertEquals(FinishReason.LENGTH, r.finish)
        assertEquals(2, runner.delivered)
        assertEquals(2, runner.count("stop"))
    }

    @Test
    fun theCapCountsPieces() {
        val runner = ScriptedRunner(listOf("a", "b", "c", "d", "e"))
        val r = Generator(runner, listOf(end)).generate(request(max = 3)) {}
        assertEquals("abc", r.text)
        assertEquals(3, r.pieces)
        assertEquals(3, runner.delivered)
    }

    @Test
    fun cancelFromAnotherThreadEndsTheRequestAndKeepsItsText() {
        val twoShown = CountDownLatch(1)
        val stopped = CountDownLatch(1)
        val g = arrayOfNulls<Generator>(1)
        val runner = object : LlmEngine {
            @Volatile var stop = false
            override fun load() {}
            override fun resetContext() {}
            override fun generate(prompt: String, temperature: Double, listener: EngineListener) {
                for (i in 0 until 1000) {
                    listener.onPiece("p$i ")
                    if (i == 1) {
                        twoShown.countDown()
                        assertTrue("stop() never came", stopped.await(10, TimeUnit.SECONDS))
                    }
                    if (stop) return
                }
            }
            override fun stop() { stop = true; stopped.countDown() }
            override fun close() {}
        }
        g[0] = Generator(runner, listOf(end))
        var result: GenerationResult? = null
        val worker = Thread { result = g[0]!!.generate(request()) {} }
        worker.start()
        assertTrue(twoShown.await(10, TimeUnit.SECONDS))
        assertTrue(g[0]!!.isRunning)
        g[0]!!.cancel()
        worker.join(10_000)
        assertEquals("p0 p1 ", result!!.text)
        assertEquals(FinishReason.CANCELLED, result!!.finish)
        assertFalse(g[0]!!.isRunning)
    }

    @Test
    fun cancelBeforeTheFirstPieceShowsNothing() {
        lateinit var g: Generator
        val runner = object : LlmEngine {
            val inner = ScriptedRunner(listOf("a", "b", "c"))
            override fun load() {}
            override fun resetContext() = g.cancel() // the user taps Stop while the request starts
            override fun generate(prompt: String, temperature: Double, listener: EngineListener) =
                inner.generate(prompt, temperature, listener)
            override fun stop() = inner.stop()
            override fun close() {}
        }
        g = Generator(runner, listOf(end))
        val r = g.generate(request()) { fail("shown: $it") }
        assertEquals("", r.text)
        assertEquals(FinishReason.CANCELLED, r.finish)
        assertEquals(2, runner.inner.delivered)
    }

    @Test
    fun aStopGivenBeforeTheRequestStartedEndsItAtTheFirstPiece() {
        val runner = ScriptedRunner(listOf("a", "b", "c", "d"))
        val r = Generator(runner, listOf(end)).generate(request(), stopRequested = { true }) { fail("shown: $it") }
        assertEquals(FinishReason.CANCELLED, r.finish)
        assertEquals("", r.text)
        assertEquals(2, runner.delivered) // the runner forgets the first stop, as LlmModule's does
    }

    @Test
    fun cancelWhenIdleDoesNothing() {
        val runner = ScriptedRunner(listOf("a"))
        Generator(runner, listOf(end)).cancel()
        assertTrue(runner.calls.isEmpty())
    }

    @Test
    fun aSecondRequestWhileOneRunsIsRefused() {
        lateinit var g: Generator
        val runner = ScriptedRunner(listOf("a", "b"))
        g = Generator(runner, listOf(end))
        var refused: EdgeError? = null
        g.generate(request()) {
            try {
                g.generate(request()) {}
            } catch (e: EdgeError) {
                refused = e
            }
        }
        assertTrue(refused!!.message!!.contains("already running"))
        assertEquals(1, runner.count("generate"))
    }

    @Test
    fun runtimeErrorsBecomeMessagesAndTheNextRequestRuns() {
        val runner = ScriptedRunner(listOf("ok", end), setOf(end))
        runner.failWith = EngineException(RuntimeErrors.INVALID_ARGUMENT, "pos_ 0 + num_prompt_tokens 300 >= max_context_len 256")
        val g = Generator(runner, listOf(end), maxContext = 256)
        try {
            g.generate(request()) {}
            fail("no error")
        } catch (e: EdgeError) {
            assertTrue(e.message!!, e.message!!.contains("context of 256 tokens"))
        }
        assertFalse(g.isRunning)
        runner.failWith = null
        assertEquals("ok", g.generate(request()) {}.text)
    }

    @Test
    fun statisticsReachTheResult() {
        val json = """{"prompt_tokens":7,"generated_tokens":3,"model_load_start_ms":0,"model_load_end_ms":0,""" +
            """"inference_start_ms":100,"inference_end_ms":400,"prompt_eval_end_ms":150,"first_token_ms":160,""" +
            """"SCALING_FACTOR_UNITS_PER_SECOND":1000}"""
        val r = Generator(ScriptedRunner(listOf("x", end), setOf(end), json), listOf(end)).generate(request()) {}
        assertEquals(7L, r.stats!!.promptTokens)
        assertEquals(140.0, r.stats!!.prefillTokensPerSecond!!, 1e-9)
        assertEquals(12.0, r.stats!!.decodeTokensPerSecond!!, 1e-9)
        assertEquals(0.06, r.stats!!.timeToFirstTokenSeconds, 1e-12)
        assertEquals(null, r.stats!!.loadSeconds)
    }

    @Test
    fun badStatisticsNameTheField() {
        try {
            RunnerStats.parse("""{"prompt_tokens":"7"}""")
            fail("accepted")
        } catch (e: EdgeError) {
            assertTrue(e.message!!, e.message!!.contains("'prompt_tokens'"))
        }
    }

    @Test
    fun requestsOutsideTheRunnersLimitsAreRefused() {
        for ((max, t) in listOf(0 to 0.0, 10 to -0.1, 10 to 1.5, 10 to Double.NaN)) {
            try {
                GenerationRequest("p", max, t)
                fail("accepted $max $t")
            } catch (e: EdgeError) {
                assertTrue(e.message!!.isNotBlank())
            }
        }
    }
}
