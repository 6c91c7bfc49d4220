package org.llamaedge.core

/** The tasks of edge/data/tasks.json (the one copy of the prompts; the app ships it as an asset). */
enum class Task(val id: String) {
    SUMMARIZE("summarize"),
    REWRITE("rewrite");

    companion object {
        fun of(id: String): Task = entries.firstOrNull { it.id == id }
            ?: throw EdgeError("unknown task '$id'; use summarize or rewrite")
    }
}

/** A task's decoding defaults. ExecuTorch's runner honours the temperature and the output cap;
 * it has no top-p, top-k or repetition penalty, so those are read but not applied. */
data class TaskDefaults(
    val maxNewTokens: Int,
    val temperature: Double,
    val topP: Double,
    val topK: Int,
    val repetitionPenalty: Double,
)

/**
 * The task prompts, styles, input limits and decoding defaults, with the rules of edge/tasks.py:
 * input capped in UTF-8 bytes before anything else, stripped, refused when empty; a rewrite
 * style stripped, 1..maxStyleChars code points, a named style replaced by its description
 * (looked up in lower case), any other used as given; the prompt filled in one pass, like
 * Python's str.format, so braces inside the user's text or style stay as they are.
 */
class TaskSpec private constructor(
    private val prompts: Map<Task, PromptTemplate>,
    /** Named styles (name -> description), in the file's order. */
    val styles: Map<String, String>,
    val maxInputBytes: Int,
    val maxStyleChars: Int,
    val defaults: Map<Task, TaskDefaults>,
) {
    companion object {
        const val FORMAT = "llama-edge-tasks"
        const val VERSION = 1
        const val ASSET_NAME = "tasks.json"

        fun parse(text: String, source: String = ASSET_NAME): TaskSpec {
            val root = JsonFields.parse(text, source)
            if (root.stringOrNull("format") != FORMAT || root.longOrNull("version") != VERSION.toLong()) {
                throw EdgeError("$source: not a $FORMAT v$VERSION file")
            }
            val limits = root.obj("limits")
            val tasks = root.obj("tasks")
            val prompts = mutableMapOf<Task, PromptTemplate>()
            val defaults = mutableMapOf<Task, TaskDefaults>()
            for (task in Task.entries) {
                val t = tasks.obj(task.id)
                val names = if (task == Task.REWRITE) setOf("style", "text") else setOf("text")
                prompts[task] = PromptTemplate.parse(t.string("prompt"), names, "$source: tasks.${task.id}.prompt")
                val d = t.obj("defaults")
                defaults[task] = TaskDefaults(
                    maxNewTokens = d.int("max_new_tokens"),
                    temperature = d.double("temperature"),
                    topP = d.double("top_p"),
                    topK = d.int("top_k"),
                    repetitionPenalty = d.double("repetition_penalty"),
                )
            }
            val maxInput = limits.int("max_input_bytes")
            val maxStyle = limits.int("max_style_chars")
            if (maxInput < 1 || maxStyle < 1) throw EdgeError("$source: limits must be positive")
            return TaskSpec(prompts, tasks.obj(Task.REWRITE.id).stringMap("styles"), maxInput, maxStyle, defaults)
        }
    }

    /** The user's document as the task uses it (edge.tasks.read_input's rules). */
    fun prepareInput(text: String): String {
        val bytes = PyText.utf8Bytes(text)
        if (bytes > maxInputBytes) {
            throw EdgeError("The text is $bytes bytes, over the $maxInputBytes-byte limit; split it into parts.")
        }
        val stripped = PyText.strip(text)
        if (stripped.isEmpty()) throw EdgeError("The text is empty; type or paste the text to work on.")
        return stripped
    }

    /** The description a rewrite style stands for (edge.tasks.rewrite_messages' rules). */
    fun styleDescription(style: String): String {
        val s = PyText.strip(style)
        if (s.isEmpty() || PyText.codePoints(s) > maxStyleChars) {
            throw EdgeError(
                "Style: give a short style such as ${styles.keys.joinToString(", ")} " +
                    "(at most $maxStyleChars characters)."
            )
        }
        return styles[s.lowercase(java.util.Locale.ROOT)] ?: s
    }

    /** The user turn's content for a task; `style` is required for rewrite. */
    fun userContent(task: Task, text: String, style: String? = null): String {
        val doc = prepareInput(text)
        return when (task) {
            Task.SUMMARIZE -> prompts.getValue(task).fill(mapOf("text" to doc))
            Task.REWRITE -> prompts.getValue(task).fill(
                mapOf("style" to styleDescription(style ?: ""), "text" to doc)
            )
        }
    }

    /** The conversation for a task: an optional system message (none when blank), then the
     * user turn. */
    fun messages(task: Task, text: String, style: String? = null, system: String? = null): List<Message> {
        val user = Message(Role.USER, userContent(task, text, style))
        return if (system == null || PyText.strip(system).isEmpty()) listOf(user)
        else listOf(Message(Role.SYSTEM, system), user)
    }
}

/** A `str.format` template with named fields only: `{name}` fields, `{{` and `}}` escapes. */
internal class PromptTemplate private constructor(private val parts: List<Pair<Boolean, String>>) {
    companion object {
        fun parse(template: String, names: Set<String>, where: String): PromptTemplate {
            val parts = mutableListOf<Pair<Boolean, String>>() // (is a field, literal text or field name)
            val literal = StringBuilder()
            var i = 0
            while (i < template.length) {
                val c = template[i]
                when {
                    c == '{' && template.startsWith("{{", i) -> { literal.append('{'); i += 2 }
                    c == '}' && template.startsWith("}}", i) -> { literal.append('}'); i += 2 }
                    c == '{' -> {
                        val end = template.indexOf('}', i)
                        if (end < 0) throw EdgeError("$where: unclosed '{'")
                        val name = template.substring(i + 1, end)
                        if (name !in names) {
                            throw EdgeError("$where: unknown field {$name}; allowed: ${names.joinToString { "{$it}" }}")
                        }
                        parts += false to literal.toString()
                        literal.clear()
                        parts += true to name
                        i = end + 1
                    }
                    c == '}' -> throw EdgeError("$where: single '}' (write '}}' for a brace)")
                    else -> { literal.append(c); i++ }
                }
            }
            parts += false to literal.toString()
            return PromptTemplate(parts)
        }
    }

    fun fill(values: Map<String, String>): String = buildString {
        for ((field, s) in parts) append(if (field) values.getValue(s) else s)
    }
}
