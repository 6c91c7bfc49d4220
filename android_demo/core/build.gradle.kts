// Pure Kotlin (no Android imports): prompt building, end-of-generation handling, the runner's
// statistics, the generation state machine and model file checks. Its tests read the test
// vectors that the Python side generates (tests/android_demo/vectors.json) and the task
// prompts (edge/data/tasks.json) from the repository.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.kotlin.jvm)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

dependencies {
    implementation(libs.kotlinx.serialization.json)
    testImplementation(libs.junit)
}

val repo = rootDir.resolve("..")

tasks.test {
    systemProperty("llamaedge.vectors", repo.resolve("tests/android_demo/vectors.json").path)
    systemProperty("llamaedge.tasks", repo.resolve("edge/data/tasks.json").path)
    inputs.file(repo.resolve("tests/android_demo/vectors.json"))
    inputs.file(repo.resolve("edge/data/tasks.json"))
}
