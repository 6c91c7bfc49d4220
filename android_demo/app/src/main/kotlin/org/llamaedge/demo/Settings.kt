package org.llamaedge.demo

import android.content.Context
import org.llamaedge.core.EdgeError
import org.llamaedge.core.ModelLocator
import java.io.File

/**
 * The user's settings, kept in the app's preferences. Temperature and max new tokens are null
 * when unset: the task's defaults from tasks.json apply.
 */
class Settings(context: Context) {
    private val prefs = context.getSharedPreferences("settings", Context.MODE_PRIVATE)

    /** Where `adb push` puts the model by default; the app reads it without extra permissions. */
    val modelDirectory: File = context.getExternalFilesDir(null) ?: context.filesDir

    var modelPath: String
        get() = prefs.getString(MODEL, null) ?: File(modelDirectory, ModelLocator.PROGRAM).path
        set(v) = prefs.edit().putString(MODEL, v.trim()).apply()

    var tokenizerPath: String
        get() = prefs.getString(TOKENIZER, "") ?: ""
        set(v) = prefs.edit().putString(TOKENIZER, v.trim()).apply()

    var temperature: Double?
        get() = prefs.getString(TEMPERATURE, null)?.toDoubleOrNull()
        set(v) = prefs.edit().putString(TEMPERATURE, v?.toString()).apply()

    var maxNewTokens: Int?
        get() = prefs.getString(MAX_NEW_TOKENS, null)?.toIntOrNull()
        set(v) = prefs.edit().putString(MAX_NEW_TOKENS, v?.toString()).apply()

    var systemPrompt: String
        get() = prefs.getString(SYSTEM, "") ?: ""
        set(v) = prefs.edit().putString(SYSTEM, v).apply()

    fun reset() = prefs.edit().clear().apply()

    companion object {
        private const val MODEL = "model_path"
        private const val TOKENIZER = "tokenizer_path"
        private const val TEMPERATURE = "temperature"
        private const val MAX_NEW_TOKENS = "max_new_tokens"
        private const val SYSTEM = "system_prompt"
        const val MAX_NEW_TOKENS_LIMIT = 100_000

        /** A temperature field: empty -> null; else a number in [0, 1] (the runner's range). */
        fun parseTemperature(s: String, message: String): Double? {
            if (s.isBlank()) return null
            val t = s.trim().toDoubleOrNull()
            if (t == null || t.isNaN() || t < 0.0 || t > 1.0) throw EdgeError(message)
            return t
        }

        fun parseMaxNewTokens(s: String, message: String): Int? {
            if (s.isBlank()) return null
            val n = s.trim().toIntOrNull()
            if (n == null || n < 1 || n > MAX_NEW_TOKENS_LIMIT) throw EdgeError(message)
            return n
        }
    }
}
