package org.llamaedge.demo

import android.app.Activity
import android.graphics.Color
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.widget.Button
import android.widget.EditText
import android.widget.TextView
import org.llamaedge.core.EdgeError
import org.llamaedge.core.ModelLocator

/**
 * Model and tokenizer paths, temperature, max new tokens and an optional system prompt.
 * "Check model" runs the file checks (no loading) and names what is wrong; "Save" refuses
 * values the runner cannot take.
 */
class SettingsActivity : Activity() {
    private val ui = Handler(Looper.getMainLooper())
    private lateinit var settings: Settings
    private lateinit var modelPath: EditText
    private lateinit var tokenizerPath: EditText
    private lateinit var temperature: EditText
    private lateinit var maxNewTokens: EditText
    private lateinit var systemPrompt: EditText
    private lateinit var status: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_settings)
        actionBar?.setDisplayHomeAsUpEnabled(true)
        settings = Settings(this)
        modelPath = findViewById(R.id.model_path)
        tokenizerPath = findViewById(R.id.tokenizer_path)
        temperature = findViewById(R.id.temperature)
        maxNewTokens = findViewById(R.id.max_new_tokens)
        systemPrompt = findViewById(R.id.system_prompt)
        status = findViewById(R.id.settings_status)
        findViewById<TextView>(R.id.push_hint).text = getString(R.string.push_hint, settings.modelDirectory.path)
        show()
        findViewById<Button>(R.id.check_model).setOnClickListener { check() }
        findViewById<Button>(R.id.reset_defaults).setOnClickListener {
            settings.reset()
            show()
        }
        findViewById<Button>(R.id.save).setOnClickListener { save() }
    }

    override fun onNavigateUp(): Boolean {
        finish()
        return true
    }

    private fun show() {
        modelPath.setText(settings.modelPath)
        tokenizerPath.setText(settings.tokenizerPath)
        temperature.setText(settings.temperature?.toString() ?: "")
        maxNewTokens.setText(settings.maxNewTokens?.toString() ?: "")
        systemPrompt.setText(settings.systemPrompt)
        status.text = ""
    }

    private fun report(message: String, error: Boolean) {
        status.setTextColor(if (error) Color.rgb(0xB0, 0x00, 0x20) else modelPath.currentTextColor)
        status.text = message
    }

    private fun check() {
        val files = ModelLocator.resolve(modelPath.text.toString(), tokenizerPath.text.toString())
        ModelSession.worker.execute {
            val (message, error) = try {
                val m = ModelLocator.check(files)
                getString(
                    R.string.model_ok, m.files.program.path, m.config.chatFormat.id, m.config.maxContext,
                    android.text.format.Formatter.formatFileSize(this, m.files.program.length()),
                ) to false
            } catch (e: EdgeError) {
                (e.message ?: e.toString()) to true
            }
            ui.post { if (!isDestroyed) report(message, error) }
        }
    }

    private fun save() {
        try {
            val t = Settings.parseTemperature(temperature.text.toString(), getString(R.string.temperature_invalid))
            val n = Settings.parseMaxNewTokens(maxNewTokens.text.toString(), getString(R.string.max_new_tokens_invalid))
            settings.modelPath = modelPath.text.toString()
            settings.tokenizerPath = tokenizerPath.text.toString()
            settings.temperature = t
            settings.maxNewTokens = n
            settings.systemPrompt = systemPrompt.text.toString()
            finish()
        } catch (e: EdgeError) {
            report(e.message ?: e.toString(), true)
        }
    }
}
