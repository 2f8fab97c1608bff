// The chat's state: the packaged models, the loaded engine and the conversation.

import Foundation
import LowbitEngine

@MainActor
final class ChatViewModel: ObservableObject {
    struct Line: Identifiable, Equatable {
        let id = UUID()
        let role: ChatMessage.Role
        var text: String
    }

    @Published private(set) var models: [AppConfig.Model] = []
    @Published var selectedModelID: String?
    @Published private(set) var lines: [Line] = []
    @Published private(set) var status = ""
    @Published private(set) var isLoading = false
    @Published private(set) var isGenerating = false
    @Published var errorMessage: String?

    private var engine: LowbitEngine?
    private var loadedModelID: String?
    /// The `dist/bundle` folder reference inside the app.
    private let bundleDir: URL

    init(bundle: Bundle = .main) {
        bundleDir = bundle.bundleURL.appendingPathComponent("bundle", isDirectory: true)
        do {
            models = try AppConfig.load(bundleDir: bundleDir).modelList
            selectedModelID = models.first?.id
        } catch {
            errorMessage = error.localizedDescription
        }
    }

    var canSend: Bool { engine != nil && !isLoading && !isGenerating }

    /// Loads the selected model unless it is the one loaded.
    func loadSelectedModel() async {
        guard !isLoading, !isGenerating, let id = selectedModelID, id != loadedModelID,
              let model = models.first(where: { $0.id == id }) else { return }
        guard let documents = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask).first else {
            errorMessage = "no Documents folder"
            return
        }
        isLoading = true
        status = "Loading \(model.modelID)…"
        engine = nil  // free the previous model before loading the next
        loadedModelID = nil
        lines = []
        let weights = model.weightDirectory(bundleDir: bundleDir, documentsDir: documents)
        do {
            engine = try await LowbitEngine.load(modelDir: weights.path, modelLib: model.modelLib)
            loadedModelID = model.id
            status = ""
        } catch {
            errorMessage = error.localizedDescription
            status = ""
        }
        isLoading = false
        if selectedModelID != model.id {
            await loadSelectedModel()  // the selection changed while loading
        }
    }

    /// Sends `text` with the whole conversation and streams the reply into the last line.
    func send(_ text: String) {
        let prompt = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let engine, canSend, !prompt.isEmpty else { return }
        lines.append(Line(role: .user, text: prompt))
        let request = ChatCompletionRequest(messages: lines.map { ChatMessage(role: $0.role, content: $0.text) })
        lines.append(Line(role: .assistant, text: ""))
        isGenerating = true
        status = ""
        Task {
            do {
                for try await chunk in engine.chatCompletion(request) {
                    appendToReply(chunk.text)
                    if let usage = chunk.usage {
                        let speed = String(format: "%.1f", usage.extra?.decodeTokensPerSecond ?? 0)
                        status = "\(usage.completionTokens) tokens, \(speed) tokens/s"
                    }
                }
            } catch {
                errorMessage = error.localizedDescription
            }
            isGenerating = false
        }
    }

    /// Stops the reply after the current token; the text so far stays in the conversation.
    func stop() {
        engine?.abort()
    }

    /// Starts a new conversation.
    func newChat() {
        guard !isGenerating else { return }
        engine?.reset()
        lines = []
        status = ""
    }

    private func appendToReply(_ text: String) {
        guard !text.isEmpty, let last = lines.indices.last else { return }
        lines[last].text += text
    }
}
