// llama-edge's Android demo: core/ (pure Kotlin: prompts, stop handling, runner statistics,
// generation state) and app/ (Android Views; ExecuTorch's LlmModule runs the exported model).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}

rootProject.name = "llama-edge-demo"
include(":core", ":app")
