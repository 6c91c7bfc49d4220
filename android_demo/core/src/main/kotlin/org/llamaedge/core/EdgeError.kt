package org.llamaedge.core

/**
 * A failure the user can act on: the message names the file, field or setting at fault and says
 * what to do. The app shows it as it is.
 */
class EdgeError(message: String) : Exception(message)
