package org.llamaedge.core

/**
 * The text rules llama-edge's Python side applies, where Kotlin's own differ: Python's
 * `str.strip()` (also Jinja's `trim` in chat templates) and `len()` in code points.
 */
object PyText {
    /** Python's `str.isspace()` set: bidirectional classes WS, B, S and category Zs. Kotlin's
     * `isWhitespace` leaves out U+0085 (NEXT LINE), which Python strips. */
    fun isSpace(c: Char): Boolean = when (c.code) {
        in 0x09..0x0D, in 0x1C..0x20, 0x85, 0xA0, 0x1680, in 0x2000..0x200A,
        0x2028, 0x2029, 0x202F, 0x205F, 0x3000 -> true
        else -> false
    }

    fun strip(s: String): String {
        var start = 0
        var end = s.length
        while (start < end && isSpace(s[start])) start++
        while (end > start && isSpace(s[end - 1])) end--
        return s.substring(start, end)
    }

    fun codePoints(s: String): Int = s.codePointCount(0, s.length)

    fun utf8Bytes(s: String): Int = s.toByteArray(Charsets.UTF_8).size
}
