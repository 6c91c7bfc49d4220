package org.llamaedge.core

import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.booleanOrNull
import kotlinx.serialization.json.doubleOrNull
import kotlinx.serialization.json.longOrNull

/**
 * Typed reads of one JSON object whose errors name the file and the field ("tasks.json: field
 * 'tasks.rewrite.styles' must be an object").
 */
internal class JsonFields(private val obj: JsonObject, private val source: String, private val path: String = "") {

    companion object {
        fun parse(text: String, source: String): JsonFields {
            val element = try {
                Json.parseToJsonElement(text)
            } catch (e: IllegalArgumentException) {
                throw EdgeError("$source: not valid JSON (${e.message?.lineSequence()?.firstOrNull()})")
            }
            if (element !is JsonObject) throw EdgeError("$source: expected a JSON object")
            return JsonFields(element, source)
        }
    }

    val keys: Set<String> get() = obj.keys

    private fun name(key: String) = if (path.isEmpty()) key else "$path.$key"

    private fun fail(key: String, what: String): Nothing =
        throw EdgeError("$source: field '${name(key)}' $what")

    private fun required(key: String): JsonElement {
        val v = obj[key]
        if (v == null || v is JsonNull) fail(key, "is missing")
        return v
    }

    private fun primitive(key: String, v: JsonElement, what: String): JsonPrimitive =
        v as? JsonPrimitive ?: fail(key, "must be $what")

    fun has(key: String): Boolean = obj[key] != null && obj[key] !is JsonNull

    fun string(key: String): String {
        val p = primitive(key, required(key), "a string")
        if (!p.isString) fail(key, "must be a string")
        return p.content
    }

    fun stringOrNull(key: String): String? = if (has(key)) string(key) else null

    fun long(key: String): Long {
        val p = primitive(key, required(key), "an integer")
        if (p.isString) fail(key, "must be an integer, not a string")
        return p.longOrNull ?: fail(key, "must be an integer (got ${p.content})")
    }

    fun longOrNull(key: String): Long? = if (has(key)) long(key) else null

    fun int(key: String): Int {
        val v = long(key)
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) fail(key, "is out of range ($v)")
        return v.toInt()
    }

    fun double(key: String): Double {
        val p = primitive(key, required(key), "a number")
        if (p.isString) fail(key, "must be a number, not a string")
        return p.doubleOrNull ?: fail(key, "must be a number (got ${p.content})")
    }

    fun bool(key: String): Boolean {
        val p = primitive(key, required(key), "true or false")
        if (p.isString) fail(key, "must be true or false, not a string")
        return p.booleanOrNull ?: fail(key, "must be true or false (got ${p.content})")
    }

    fun obj(key: String): JsonFields =
        JsonFields(required(key) as? JsonObject ?: fail(key, "must be an object"), source, name(key))

    private fun array(key: String): JsonArray = required(key) as? JsonArray ?: fail(key, "must be a list")

    fun stringList(key: String): List<String> = array(key).mapIndexed { i, v ->
        val p = v as? JsonPrimitive
        if (p == null || !p.isString) fail("$key[$i]", "must be a string")
        p.content
    }

    fun objList(key: String): List<JsonFields> = array(key).mapIndexed { i, v ->
        JsonFields(v as? JsonObject ?: fail("$key[$i]", "must be an object"), source, name("$key[$i]"))
    }

    /** String values of an object field, in the file's order. */
    fun stringMap(key: String): Map<String, String> {
        val o = obj(key)
        return o.keys.associateWith { o.string(it) }
    }
}
