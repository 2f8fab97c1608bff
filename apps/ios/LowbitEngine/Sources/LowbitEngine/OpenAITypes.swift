// The JSON shapes of lowbit's native engine: OpenAI requests in, streamed chunks out.
// Optional fields left nil are not sent (the engine refuses unknown fields, and treats absent
// ones as its defaults).

import Foundation

/// One chat message. The native engine takes text content.
public struct ChatMessage: Codable, Sendable, Equatable {
    public enum Role: String, Codable, Sendable {
        case system, user, assistant
    }

    public var role: Role
    public var content: String

    public init(role: Role, content: String) {
        self.role = role
        self.content = content
    }
}

/// Sampling fields shared by chat and completion requests.
public struct SamplingParameters: Sendable, Equatable {
    public var maxTokens: Int?
    public var temperature: Double?
    public var topP: Double?
    public var topK: Int?
    public var presencePenalty: Double?
    public var frequencyPenalty: Double?
    public var repetitionPenalty: Double?
    /// Token id (as a string, as in OpenAI's API) to a bias added to its logit.
    public var logitBias: [String: Double]?
    public var seed: Int?
    public var stop: [String]?

    public init(maxTokens: Int? = nil, temperature: Double? = nil, topP: Double? = nil, topK: Int? = nil,
                presencePenalty: Double? = nil, frequencyPenalty: Double? = nil,
                repetitionPenalty: Double? = nil, logitBias: [String: Double]? = nil,
                seed: Int? = nil, stop: [String]? = nil) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.repetitionPenalty = repetitionPenalty
        self.logitBias = logitBias
        self.seed = seed
        self.stop = stop
    }
}

private enum SamplingKeys: String, CodingKey {
    case maxTokens = "max_tokens", temperature, topP = "top_p", topK = "top_k"
    case presencePenalty = "presence_penalty", frequencyPenalty = "frequency_penalty"
    case repetitionPenalty = "repetition_penalty", logitBias = "logit_bias", seed, stop
}

extension SamplingParameters {
    fileprivate func encodeFields(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: SamplingKeys.self)
        try c.encodeIfPresent(maxTokens, forKey: .maxTokens)
        try c.encodeIfPresent(temperature, forKey: .temperature)
        try c.encodeIfPresent(topP, forKey: .topP)
        try c.encodeIfPresent(topK, forKey: .topK)
        try c.encodeIfPresent(presencePenalty, forKey: .presencePenalty)
        try c.encodeIfPresent(frequencyPenalty, forKey: .frequencyPenalty)
        try c.encodeIfPresent(repetitionPenalty, forKey: .repetitionPenalty)
        try c.encodeIfPresent(logitBias, forKey: .logitBias)
        try c.encodeIfPresent(seed, forKey: .seed)
        try c.encodeIfPresent(stop, forKey: .stop)
    }
}

/// An OpenAI chat completion request. Send the whole conversation each turn: the engine reuses
/// the KV cache of the prefix it has already seen.
public struct ChatCompletionRequest: Encodable, Sendable, Equatable {
    public var messages: [ChatMessage]
    public var sampling: SamplingParameters

    public init(messages: [ChatMessage], sampling: SamplingParameters = SamplingParameters()) {
        self.messages = messages
        self.sampling = sampling
    }

    private enum CodingKeys: String, CodingKey { case messages }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(messages, forKey: .messages)
        try sampling.encodeFields(to: encoder)
    }
}

/// An OpenAI completion request: a raw prompt, no chat template.
public struct CompletionRequest: Encodable, Sendable, Equatable {
    public var prompt: String
    public var sampling: SamplingParameters

    public init(prompt: String, sampling: SamplingParameters = SamplingParameters()) {
        self.prompt = prompt
        self.sampling = sampling
    }

    private enum CodingKeys: String, CodingKey { case prompt }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(prompt, forKey: .prompt)
        try sampling.encodeFields(to: encoder)
    }
}

/// Token counts and speeds, on the last chunk of a reply.
public struct Usage: Decodable, Sendable, Equatable {
    public struct Extra: Decodable, Sendable, Equatable {
        public var prefillTokens: Int?
        public var cachedPromptTokens: Int?
        public var prefillTokensPerSecond: Double?
        public var decodeTokensPerSecond: Double?
        public var timeToFirstTokenSeconds: Double?

        private enum CodingKeys: String, CodingKey {
            case prefillTokens = "prefill_tokens", cachedPromptTokens = "cached_prompt_tokens"
            case prefillTokensPerSecond = "prefill_tokens_per_s"
            case decodeTokensPerSecond = "decode_tokens_per_s", timeToFirstTokenSeconds = "ttft_s"
        }
    }

    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int
    public var extra: Extra?

    private enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens", completionTokens = "completion_tokens"
        case totalTokens = "total_tokens", extra
    }
}

/// One streamed chunk: a "chat.completion.chunk" (text in `choices[0].delta.content`) or a
/// "text_completion" (text in `choices[0].text`). The last chunk has no choices and carries `usage`.
public struct CompletionChunk: Decodable, Sendable, Equatable {
    public struct Delta: Decodable, Sendable, Equatable {
        public var role: ChatMessage.Role?
        public var content: String?
    }

    public struct Choice: Decodable, Sendable, Equatable {
        public var index: Int
        public var delta: Delta?
        public var text: String?
        /// "stop", "length" or "interrupted" (after `abort()`) on the last chunk with choices, nil before.
        public var finishReason: String?

        private enum CodingKeys: String, CodingKey {
            case index, delta, text, finishReason = "finish_reason"
        }
    }

    public var id: String
    public var object: String
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage?

    /// The text this chunk adds to the reply ("" for the closing chunks).
    public var text: String {
        guard let choice = choices.first else { return "" }
        return choice.delta?.content ?? choice.text ?? ""
    }
}

/// A failure reported by the engine: a bad request ("invalid_request_error"), a runtime failure
/// ("internal_error"), or a model that failed to load ("load_error", from `lowbit_last_error`).
public struct LowbitError: Error, LocalizedError, Decodable, Sendable, Equatable {
    public var message: String
    public var type: String

    public init(message: String, type: String) {
        self.message = message
        self.type = type
    }

    public var errorDescription: String? { message }
}

/// `{"error": {"message", "type"}}`, the engine's one error chunk.
struct ErrorChunk: Decodable {
    var error: LowbitError
}
