package ai.lowbit.chat

import ai.lowbit.AppConfig
import ai.lowbit.LowbitEngine
import ai.lowbit.LowbitException
import android.app.Activity
import android.content.res.AssetManager
import android.os.Bundle
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import java.io.File
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * One screen: pick a packaged model, type, read the reply as it streams, stop it. The engine runs
 * on one worker thread; the Stop button aborts from the UI thread.
 */
class MainActivity : Activity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var engine: LowbitEngine? = null // the worker's
    @Volatile private var session: ChatSession? = null

    private lateinit var status: TextView
    private lateinit var transcript: TextView
    private lateinit var scroll: ScrollView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        status = findViewById(R.id.status)
        transcript = findViewById(R.id.transcript)
        scroll = findViewById(R.id.scroll)
        val prompt = findViewById<EditText>(R.id.prompt)

        val models = try {
            AppConfig.parse(assets.open(APP_CONFIG).bufferedReader().use { it.readText() }).models
        } catch (e: Exception) {
            status.text = e.message ?: "cannot read $APP_CONFIG"
            return
        }
        val picker = findViewById<Spinner>(R.id.models)
        picker.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, models.map { it.modelId })
        picker.onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
            override fun onItemSelected(parent: AdapterView<*>?, view: View?, position: Int, id: Long) = load(models[position])
            override fun onNothingSelected(parent: AdapterView<*>?) {}
        }
        findViewById<Button>(R.id.send).setOnClickListener {
            val text = prompt.text.toString()
            if (text.isBlank()) return@setOnClickListener
            prompt.text.clear()
            show("\n> $text\n")
            worker.execute { reply(text) }
        }
        findViewById<Button>(R.id.stop).setOnClickListener { session?.stop() }
    }

    override fun onDestroy() {
        session?.stop()
        worker.execute { engine?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    private fun load(model: AppConfig.Model) {
        setStatus("Loading ${model.modelId}…")
        worker.execute {
            session = null
            engine?.close()
            engine = null
            try {
                val loaded = LowbitEngine(weights(model).path, model.modelLib, null)
                engine = loaded
                session = ChatSession(loaded)
                setStatus("${model.modelId} ready")
            } catch (e: Exception) {
                setStatus(e.message ?: e.toString())
            }
        }
    }

    private fun reply(text: String) {
        val chat = session ?: return setStatus("No model loaded")
        try {
            chat.send(text) { piece -> runOnUiThread { show(piece) } }
        } catch (e: LowbitException) {
            setStatus(e.message ?: e.toString())
        }
    }

    /**
     * The model's weight folder: bundled weights are copied out of the APK's assets into the files
     * dir once (the engine reads a real folder), pushed weights are read from the external files dir.
     */
    private fun weights(model: AppConfig.Model): File {
        val bundled = model.modelPath
        if (bundled == null) {
            val pushed = File(getExternalFilesDir(null), model.modelId)
            if (!File(pushed, "mlc-chat-config.json").isFile) {
                throw LowbitException("${model.modelId}'s weights are not on the device: adb push them to ${pushed.path} (README.md)")
            }
            return pushed
        }
        val folder = File(filesDir, bundled)
        if (!folder.isDirectory) copyAssetFolder(assets, bundled, folder)
        return folder
    }

    /** Copies assets/[path]/ to [folder] through a temporary folder, so a killed copy is redone. */
    private fun copyAssetFolder(assets: AssetManager, path: String, folder: File) {
        val names = assets.list(path).orEmpty()
        val partial = File(folder.path + ".partial")
        partial.deleteRecursively()
        partial.mkdirs()
        names.forEachIndexed { i, name ->
            setStatus("Copying ${folder.name}'s weights to the device once: file ${i + 1} of ${names.size}")
            assets.open("$path/$name").use { input -> File(partial, name).outputStream().use { input.copyTo(it) } }
        }
        if (!partial.renameTo(folder)) throw LowbitException("cannot move the weights into ${folder.path}")
    }

    private fun setStatus(text: String) = runOnUiThread { status.text = text }

    private fun show(text: String) {
        transcript.append(text)
        scroll.post { scroll.fullScroll(View.FOCUS_DOWN) }
    }

    private companion object {
        const val APP_CONFIG = "lowbit-app-config.json"
    }
}
