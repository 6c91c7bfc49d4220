package org.llamaedge.core

import java.time.LocalDate
import java.time.format.DateTimeFormatter
import java.util.Locale

enum class Role(val id: String) { SYSTEM("system"), USER("user"), ASSISTANT("assistant") }

data class Message(val role: Role, val content: String)

/**
 * The prompt string handed to ExecuTorch's runner, equal to llama-edge's chat ids (edge/chat.py)
 * decoded with special tokens as text (export/app_config.py `app_prompt`):
 *
 * - ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n` per turn, the template's default system
 *   turn first when the conversation has none, then `<|im_start|>assistant\n`.
 * - Llama 3: BOS; with a 3.1+ preamble a system turn of preamble + the first system message
 *   (stripped); `<|start_header_id|>{role}<|end_header_id|>\n\n{content stripped}<|eot_id|>`
 *   per turn; then the assistant header.
 * - Raw: BOS when the tokenizer adds one, then the contents.
 *
 * The runner's tokenizer turns every special-token string of the prompt into its token, so each
 * message content is neutralized first: a zero-width space goes after the first character of
 * every special-token string in it (longest first at each position), which keeps the text
 * readable and stops it from forging a turn.
 */
class PromptBuilder(private val config: AppConfig) {
    companion object {
        const val BREAK = '\u200B'
        private val CHATML = Pair("<|im_start|>", "<|im_end|>")
        private const val HEADER = "<|start_header_id|>"
        private const val HEADER_END = "<|end_header_id|>"
        private const val EOT = "<|eot_id|>"
    }

    // Longest first, so that at any position the longest special-token string is the one broken.
    private val specials: Map<Char, List<String>> = config.specialTokens.filter { it.isNotEmpty() }
        .distinct().sortedByDescending { it.length }.groupBy { it[0] }

    fun neutralize(text: String): String {
        val out = StringBuilder(text.length)
        var i = 0
        while (i < text.length) {
            val hit = specials[text[i]]?.firstOrNull { text.startsWith(it, i) }
            if (hit == null) {
                out.append(text[i])
                i++
            } else {
                out.append(hit[0]).append(BREAK).append(hit, 1, hit.length)
                i += hit.length
            }
        }
        return out.toString()
    }

    /** The Llama 3.1+ preamble's date: the model's fixed date, or `today` in its pattern. */
    fun preambleDate(today: LocalDate): String = config.llama3PreambleDate
        ?: today.format(DateTimeFormatter.ofPattern(config.deviceDatePattern, Locale.ENGLISH))

    fun build(messages: List<Message>, today: LocalDate = LocalDate.now()): String {
        if (messages.isEmpty()) throw EdgeError("a prompt needs at least one message")
        val turns = messages.map { Message(it.role, neutralize(it.content)) }
        return when (config.chatFormat) {
            ChatFormat.CHATML -> chatml(turns)
            ChatFormat.LLAMA3 -> llama3(turns, today)
            ChatFormat.RAW -> buildString {
                if (config.addBos && config.bos != null) append(config.bos)
                for (m in turns) append(m.content)
            }
        }
    }

    private fun chatml(messages: List<Message>): String = buildString {
        val (start, end) = CHATML
        val default = config.chatmlDefaultSystem
        val turns = if (default != null && messages[0].role != Role.SYSTEM) {
            listOf(Message(Role.SYSTEM, default)) + messages
        } else messages
        for (m in turns) append(start).append(m.role.id).append('\n').append(m.content).append(end).append('\n')
        append(start).append("assistant\n")
    }

    private fun llama3(messages: List<Message>, today: LocalDate): String = buildString {
        fun turn(role: String, content: String) {
            append(HEADER).append(role).append(HEADER_END).append("\n\n").append(content).append(EOT)
        }
        append(config.bos)
        var turns = messages
        val preamble = config.llama3Preamble
        if (preamble != null) {
            var system = ""
            if (turns[0].role == Role.SYSTEM) {
                system = PyText.strip(turns[0].content)
                turns = turns.drop(1)
            }
            turn("system", preamble.replace(AppConfig.DATE_PLACEHOLDER, preambleDate(today)) + system)
        }
        for (m in turns) turn(m.role.id, PyText.strip(m.content))
        append(HEADER).append("assistant").append(HEADER_END).append("\n\n")
    }
}
