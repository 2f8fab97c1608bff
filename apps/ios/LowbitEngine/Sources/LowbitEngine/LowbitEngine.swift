// Swift over lowbit's C API: one engine = one model + one conversation.

import CLowbit
import Foundation

/// Options of `lowbit_engine_create`.
public struct EngineOptions: Encodable, Sendable, Equatable {
    /// Caps the KV cache (tokens); nil keeps the model's context window.
    public var contextWindow: Int?
    /// Checks every weight shard's md5 while loading (slower start).
    public var checkMD5: Bool?

    public init(contextWindow: Int? = nil, checkMD5: Bool? = nil) {
        self.contextWindow = contextWindow
        self.checkMD5 = checkMD5
    }

    private enum CodingKeys: String, CodingKey {
        case contextWindow = "context_window", checkMD5 = "check_md5"
    }
}

/// A loaded model. Requests run one at a time, in order, on the engine's own serial queue; the
/// C calls block, so nothing here runs on the caller's (main) thread except `init`.
public final class LowbitEngine: @unchecked Sendable {
    // Immutable after init; used from the queue (requests, reset), any thread (abort) and deinit.
    private let handle: OpaquePointer
    private let queue = DispatchQueue(label: "ai.lowbit.engine", qos: .userInitiated)

    /// Loads a model (seconds: it reads every weight shard), blocking the calling thread.
    /// - Parameters:
    ///   - modelDir: the MLC weight folder.
    ///   - modelLib: "system://PREFIX" for a library linked into the app (AppConfig's `model_lib`).
    /// - Throws: `LowbitError` with the engine's one-line reason.
    public init(modelDir: String, modelLib: String, options: EngineOptions? = nil) throws {
        let optionsJSON = try options.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        let created: OpaquePointer?
        if let optionsJSON {
            created = optionsJSON.withCString { lowbit_engine_create(modelDir, modelLib, $0) }
        } else {
            created = lowbit_engine_create(modelDir, modelLib, nil)
        }
        // lowbit_last_error is per thread: read on the thread that failed.
        guard let created else {
            throw LowbitError(message: LowbitEngine.lastError() ?? "lowbit_engine_create failed", type: "load_error")
        }
        handle = created
    }

    /// Loads a model off the calling thread (see `init`).
    public static func load(modelDir: String, modelLib: String, options: EngineOptions? = nil) async throws -> LowbitEngine {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                continuation.resume(with: Result { try LowbitEngine(modelDir: modelDir, modelLib: modelLib, options: options) })
            }
        }
    }

    deinit {
        lowbit_engine_free(handle)
    }

    /// Streams the reply to a chat request. Cancelling the consuming task aborts generation after
    /// the current token. A bad request or a failure ends the stream with a `LowbitError`.
    public func chatCompletion(_ request: ChatCompletionRequest) -> AsyncThrowingStream<CompletionChunk, Error> {
        stream(encoding: request, call: lowbit_engine_chat_completion)
    }

    /// Streams the reply to a chat request given as OpenAI JSON.
    public func chatCompletion(json: String) -> AsyncThrowingStream<CompletionChunk, Error> {
        stream(json: json, call: lowbit_engine_chat_completion)
    }

    /// Streams the continuation of a raw prompt (no chat template).
    public func completion(_ request: CompletionRequest) -> AsyncThrowingStream<CompletionChunk, Error> {
        stream(encoding: request, call: lowbit_engine_completion)
    }

    /// Stops the running request after its current token. Safe from any thread.
    public func abort() {
        lowbit_engine_abort(handle)
    }

    /// Forgets the conversation (the KV cache), after any request already queued.
    public func reset() {
        queue.async { lowbit_engine_reset(self.handle) }
    }

    // MARK: - Streaming

    private typealias RequestCall = (OpaquePointer?, UnsafePointer<CChar>?, lowbit_chunk_callback?, UnsafeMutableRawPointer?) -> Int32

    private func stream<Request: Encodable>(encoding request: Request, call: @escaping RequestCall)
        -> AsyncThrowingStream<CompletionChunk, Error> {
        do {
            let json = String(decoding: try JSONEncoder().encode(request), as: UTF8.self)
            return stream(json: json, call: call)
        } catch {
            return AsyncThrowingStream { $0.finish(throwing: error) }
        }
    }

    private func stream(json: String, call: @escaping RequestCall) -> AsyncThrowingStream<CompletionChunk, Error> {
        let state = RequestState()
        return AsyncThrowingStream { continuation in
            continuation.onTermination = { [weak self] termination in
                guard case .cancelled = termination, let self else { return }
                state.cancel { lowbit_engine_abort(self.handle) }
            }
            queue.async {
                guard state.start() else { return }  // cancelled while queued: never sent
                let sink = ChunkSink(continuation: continuation)
                let status = withExtendedLifetime(sink) {
                    json.withCString { call(self.handle, $0, chunkCallback, Unmanaged.passUnretained(sink).toOpaque()) }
                }
                state.end()
                if sink.finished { return }
                if status != 0 {
                    let message = LowbitEngine.lastError() ?? "the request failed"
                    continuation.finish(throwing: LowbitError(message: message, type: "internal_error"))
                } else {
                    continuation.finish()
                }
            }
        }
    }

    private static func lastError() -> String? {
        guard let text = lowbit_last_error() else { return nil }
        let message = String(cString: text)
        return message.isEmpty ? nil : message
    }
}

/// Whether a request is queued, running or done, so that cancelling it aborts that request only.
private final class RequestState: @unchecked Sendable {
    private let lock = NSLock()
    private var running = false
    private var cancelled = false

    /// false when the request was cancelled before it ran.
    func start() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        running = !cancelled
        return running
    }

    func end() {
        lock.lock()
        running = false
        lock.unlock()
    }

    /// Marks the request cancelled; runs `abort` (under the lock) if the request is running.
    func cancel(abort: () -> Void) {
        lock.lock()
        defer { lock.unlock() }
        cancelled = true
        if running { abort() }
    }
}

/// Receives the chunks of one request, on the engine's queue.
private final class ChunkSink {
    let continuation: AsyncThrowingStream<CompletionChunk, Error>.Continuation
    let decoder = JSONDecoder()
    private(set) var finished = false

    init(continuation: AsyncThrowingStream<CompletionChunk, Error>.Continuation) {
        self.continuation = continuation
    }

    func receive(_ data: Data) {
        guard !finished else { return }
        if let failure = try? decoder.decode(ErrorChunk.self, from: data) {
            finish(throwing: failure.error)
            return
        }
        do {
            continuation.yield(try decoder.decode(CompletionChunk.self, from: data))
        } catch {
            let text = String(decoding: data.prefix(200), as: UTF8.self)
            finish(throwing: LowbitError(message: "unreadable chunk from the engine (\(error.localizedDescription)): \(text)",
                                         type: "internal_error"))
        }
    }

    private func finish(throwing error: Error) {
        finished = true
        continuation.finish(throwing: error)
    }
}

/// The C callback: `userData` is the request's `ChunkSink`, alive for the whole C call.
private let chunkCallback: lowbit_chunk_callback = { chunkJSON, userData in
    guard let chunkJSON, let userData else { return }
    let sink = Unmanaged<ChunkSink>.fromOpaque(userData).takeUnretainedValue()
    sink.receive(Data(bytes: chunkJSON, count: strlen(chunkJSON)))
}
