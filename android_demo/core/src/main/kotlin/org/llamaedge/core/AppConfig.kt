package org.llamaedge.core

/** The chat formats llama-edge ships (edge/chat.py): ChatML (SmolLM2), Llama 3 headers, raw. */
enum class ChatFormat(val id: String) {
    CHATML("chatml"),
    LLAMA3("llama3"),
    RAW("raw"),
}

/** An end-of-generation token: its id and the text the runner streams for it. */
data class EndToken(val id: Int, val text: String)

/**
 * llama_edge_app.json, written by `llama-export ... --target xnnpack` beside model.pte
 * (export/app_config.py): what the app needs to build prompts and stop as llama-edge does.
 */
data class AppConfig(
    val name: String,
    val programFile: String,
    val tokenizerFile: String,
    val chatFormat: ChatFormat,
    /** The system text a ChatML template injects when a conversation has none. */
    val chatmlDefaultSystem: String?,
    /** Llama 3.1+ system preamble with [DATE_PLACEHOLDER] for the date; null for plain Llama 3. */
    val llama3Preamble: String?,
    /** The preamble's fixed date, or null when the template uses today's date. */
    val llama3PreambleDate: String?,
    /** java.time pattern for today's date in the preamble (English month names). */
    val deviceDatePattern: String,
    val bos: String?,
    val addBos: Boolean,
    val endOfGeneration: List<EndToken>,
    /** Every special-token string the runner's tokenizer extracts from a prompt string. */
    val specialTokens: List<String>,
    val defaultTemperature: Double,
    val defaultMaxNewTokens: Int,
    val maxContext: Int,
) {
    companion object {
        const val FILE_NAME = "llama_edge_app.json"
        const val FORMAT = "llama-edge-app"
        const val VERSION = 1
        const val DATE_PLACEHOLDER = "{date}"

        fun parse(text: String, source: String = FILE_NAME): AppConfig {
            val f = JsonFields.parse(text, source)
            if (f.stringOrNull("format") != FORMAT) {
                throw EdgeError("$source: not a $FORMAT file; re-export the model with llama-export --target xnnpack")
            }
            val version = f.long("version")
            if (version != VERSION.toLong()) {
                throw EdgeError(
                    "$source: version $version, this app reads version $VERSION; " +
                        "use the llama-export and app of the same llama-edge release"
                )
            }
            val fmtId = f.string("chat_format")
            val fmt = ChatFormat.entries.firstOrNull { it.id == fmtId }
                ?: throw EdgeError("$source: field 'chat_format' is '$fmtId'; expected chatml, llama3 or raw")
            val preamble = f.stringOrNull("llama3_preamble")
            if (preamble != null && !preamble.contains(DATE_PLACEHOLDER)) {
                throw EdgeError("$source: field 'llama3_preamble' has no $DATE_PLACEHOLDER")
            }
            val bos = f.stringOrNull("bos")
            if (fmt == ChatFormat.LLAMA3 && bos == null) {
                throw EdgeError("$source: field 'bos' is missing; chat format llama3 starts with the BOS token")
            }
            val eog = f.objList("end_of_generation").map { EndToken(it.int("id"), it.string("text")) }
            if (eog.isEmpty()) throw EdgeError("$source: field 'end_of_generation' is empty")
            val gen = f.obj("generation")
            val maxContext = f.int("max_context")
            if (maxContext < 2) throw EdgeError("$source: field 'max_context' is $maxContext")
            return AppConfig(
                name = f.string("name"),
                programFile = f.string("program"),
                tokenizerFile = f.string("tokenizer"),
                chatFormat = fmt,
                chatmlDefaultSystem = f.stringOrNull("chatml_default_system"),
                llama3Preamble = preamble,
                llama3PreambleDate = f.stringOrNull("llama3_preamble_date"),
                deviceDatePattern = f.string("device_date_pattern"),
                bos = bos,
                addBos = f.bool("add_bos"),
                endOfGeneration = eog,
                specialTokens = f.stringList("special_tokens"),
                defaultTemperature = gen.double("temperature"),
                defaultMaxNewTokens = gen.int("max_new_tokens"),
                maxContext = maxContext,
            )
        }
    }
}
