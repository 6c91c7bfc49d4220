package org.llamaedge.demo

import android.app.Activity
import android.content.Intent
import android.graphics.Color
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.view.Menu
import android.view.MenuItem
import android.view.View
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.RadioGroup
import android.widget.Spinner
import android.widget.TextView
import org.llamaedge.core.EdgeError
import org.llamaedge.core.EngineException
import org.llamaedge.core.FinishReason
import org.llamaedge.core.GenerationRequest
import org.llamaedge.core.GenerationResult
import org.llamaedge.core.ModelLocator
import org.llamaedge.core.PromptBuilder
import org.llamaedge.core.RuntimeErrors
import org.llamaedge.core.Task
import org.llamaedge.core.TaskSpec
import java.util.Locale
import java.util.concurrent.atomic.AtomicBoolean

/**
 * The main screen: text in, summarize or rewrite (with a style), Generate / Stop, the answer
 * streamed as it is generated, then the runner's decode and prompt speed and time to first
 * token. Model work runs on [ModelSession.worker]; the UI thread only posts requests and shows
 * results.
 */
class MainActivity : Activity() {
    private val ui = Handler(Looper.getMainLooper())
    /** Stop for the current request, also when it comes while the model is still loading. */
    private var stopRequested = AtomicBoolean(false)
    private lateinit var settings: Settings
    private var spec: TaskSpec? = null

    private lateinit var input: EditText
    private lateinit var task: RadioGroup
    private lateinit var styleRow: View
    private lateinit var style: Spinner
    private lateinit var styleOther: EditText
    private lateinit var generate: Button
    private lateinit var stop: Button
    private lateinit var status: TextView
    private lateinit var output: TextView
    private lateinit var stats: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        settings = Settings(this)
        input = findViewById(R.id.input)
        task = findViewById(R.id.task)
        styleRow = findViewById(R.id.style_row)
        style = findViewById(R.id.style)
        styleOther = findViewById(R.id.style_other)
        generate = findViewById(R.id.generate)
        stop = findViewById(R.id.stop)
        status = findViewById(R.id.status)
        output = findViewById(R.id.output)
        stats = findViewById(R.id.stats)

        spec = try {
            assets.open(TaskSpec.ASSET_NAME).bufferedReader().use { TaskSpec.parse(it.readText(), "assets/${TaskSpec.ASSET_NAME}") }
        } catch (e: Exception) {
            showError(getString(R.string.tasks_asset_error, e.message))
            generate.isEnabled = false
            null
        }
        spec?.let { s ->
            style.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_item, s.styles.keys.toList()).also {
                it.setDropDownViewResource(android.R.layout.simple_spinner_dropdown_item)
            }
        }
        task.setOnCheckedChangeListener { _, id ->
            styleRow.visibility = if (id == R.id.task_rewrite) View.VISIBLE else View.GONE
        }
        generate.setOnClickListener { onGenerate() }
        stop.setOnClickListener {
            status.setText(R.string.status_stopping)
            stopRequested.set(true)
            ModelSession.cancel()
        }
    }

    override fun onResume() {
        super.onResume()
        if (spec != null && !stop.isEnabled) showStatus(getString(R.string.status_idle, settings.modelPath))
    }

    override fun onDestroy() {
        if (isFinishing) {
            stopRequested.set(true)
            ModelSession.cancel()
        }
        super.onDestroy()
    }

    override fun onCreateOptionsMenu(menu: Menu): Boolean {
        menuInflater.inflate(R.menu.main, menu)
        return true
    }

    override fun onOptionsItemSelected(item: MenuItem): Boolean {
        if (item.itemId != R.id.action_settings) return super.onOptionsItemSelected(item)
        startActivity(Intent(this, SettingsActivity::class.java))
        return true
    }

    private fun selectedStyle(): String {
        val own = styleOther.text.toString()
        return if (own.isNotBlank()) own else style.selectedItem?.toString() ?: ""
    }

    private fun onGenerate() {
        val s = spec ?: return
        val chosen = if (task.checkedRadioButtonId == R.id.task_rewrite) Task.REWRITE else Task.SUMMARIZE
        val text = input.text.toString()
        val styleText = if (chosen == Task.REWRITE) selectedStyle() else null
        val system = settings.systemPrompt
        val modelPath = settings.modelPath
        val tokenizerPath = settings.tokenizerPath
        val defaults = s.defaults.getValue(chosen)
        val temperature = settings.temperature ?: defaults.temperature
        val maxNewTokens = settings.maxNewTokens ?: defaults.maxNewTokens
        val stopFlag = AtomicBoolean(false).also { stopRequested = it }
        setRunning(true)
        output.text = ""
        stats.text = ""
        ModelSession.worker.execute {
            try {
                // Input errors before any slow model work.
                val messages = s.messages(chosen, text, styleText, system)
                val files = ModelLocator.resolve(modelPath, tokenizerPath)
                post { showStatus(getString(R.string.status_checking)) }
                if (ModelSession.needsLoad(files)) post { showStatus(getString(R.string.status_loading, files.program.name)) }
                val session = ModelSession.open(files)
                if (stopFlag.get()) {
                    post { showStatus(getString(R.string.finish_cancelled)) }
                    return@execute
                }
                val prompt = PromptBuilder(session.model.config).build(messages)
                val request = GenerationRequest(prompt, maxNewTokens, temperature)
                post { showStatus(getString(R.string.status_generating)) }
                val result = session.generator.generate(request, stopFlag::get) { piece ->
                    post { output.append(piece) }
                }
                post { showResult(result, session.model.config.maxContext) }
            } catch (e: EdgeError) {
                post { showError(e.message ?: e.toString()) }
            } catch (e: EngineException) {
                post { showError(RuntimeErrors.describe(e.code, e.message ?: "")) }
            } catch (e: Exception) {
                post { showError(e.toString()) }
            } catch (e: LinkageError) {
                // ExecuTorch's native library is missing for this device's ABI or failed to load.
                post { showError(e.toString()) }
            } finally {
                post { setRunning(false) }
            }
        }
    }

    private fun post(block: () -> Unit) {
        ui.post { if (!isDestroyed) block() }
    }

    private fun setRunning(running: Boolean) {
        generate.isEnabled = !running
        stop.isEnabled = running
    }

    private fun showStatus(message: String) {
        status.setTextColor(output.currentTextColor)
        status.text = message
    }

    private fun showError(message: String) {
        status.setTextColor(Color.rgb(0xB0, 0x00, 0x20))
        status.text = message
    }

    private fun rate(v: Double?) = v?.let { String.format(Locale.US, "%.1f", it) } ?: getString(R.string.stats_unavailable)

    private fun showResult(r: GenerationResult, maxContext: Int) {
        showStatus(
            when (r.finish) {
                FinishReason.EOS -> getString(R.string.finish_eos)
                FinishReason.LENGTH -> getString(R.string.finish_length, r.pieces)
                FinishReason.CANCELLED -> getString(R.string.finish_cancelled)
                FinishReason.CONTEXT -> getString(R.string.finish_context, maxContext)
            }
        )
        val st = r.stats ?: return
        stats.text = getString(
            R.string.stats_line,
            rate(st.decodeTokensPerSecond),
            rate(st.prefillTokensPerSecond),
            String.format(Locale.US, "%.2f", st.timeToFirstTokenSeconds),
            st.promptTokens,
            st.generatedTokens,
        )
    }
}
