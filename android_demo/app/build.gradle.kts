// The demo app: Android Views only (no AndroidX or Compose in our code), ExecuTorch's LlmModule
// behind one adapter file (ExecuTorchEngine.kt). Models are not packed into the APK: the README
// says how to export one and push it to the device.
import org.jetbrains.kotlin.gradle.dsl.JvmTarget

plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

/**
 * Puts the task prompts into the APK's assets from edge/data/tasks.json, the one copy in the
 * repository, which llama-edge's Python runtime reads too.
 */
abstract class TaskPromptsAsset : DefaultTask() {
    @get:InputFile
    @get:PathSensitive(PathSensitivity.NONE)
    abstract val source: RegularFileProperty

    @get:OutputDirectory
    abstract val outputDir: DirectoryProperty

    @TaskAction
    fun copy() {
        val out = outputDir.get().asFile
        out.deleteRecursively()
        out.mkdirs()
        source.get().asFile.copyTo(out.resolve("tasks.json"))
    }
}

val taskPrompts = tasks.register<TaskPromptsAsset>("taskPromptsAsset") {
    source.set(rootProject.layout.projectDirectory.file("../edge/data/tasks.json"))
}

android {
    namespace = "org.llamaedge.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "org.llamaedge.demo"
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    compilerOptions {
        jvmTarget.set(JvmTarget.JVM_17)
    }
}

androidComponents {
    onVariants { variant ->
        variant.sources.assets?.addGeneratedSourceDirectory(taskPrompts, TaskPromptsAsset::outputDir)
    }
}

dependencies {
    implementation(project(":core"))
    implementation(libs.executorch.android)
}
