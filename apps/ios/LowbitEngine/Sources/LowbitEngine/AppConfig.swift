// lowbit-app-config.json, written by `lowbit package` into dist/bundle/ next to bundled weights.

import Foundation

/// The packaged models an app can load.
public struct AppConfig: Decodable, Sendable, Equatable {
    /// The newest library metadata format this package knows; the engine linked with it checks each
    /// library's own metadata again when it loads.
    public static let supportedMetadataFormat = 2
    public static let fileName = "lowbit-app-config.json"

    public struct Model: Decodable, Sendable, Equatable, Identifiable {
        public var modelID: String
        /// "system://PREFIX": the model library linked into the app under its system_lib_prefix.
        public var modelLib: String
        public var estimatedVRAMBytes: Int64?
        /// The weight folder inside the bundle folder, when the weights were bundled.
        public var modelPath: String?

        public var id: String { modelID }

        private enum CodingKeys: String, CodingKey {
            case modelID = "model_id", modelLib = "model_lib"
            case estimatedVRAMBytes = "estimated_vram_bytes", modelPath = "model_path"
        }
    }

    public var device: String
    public var metadataFormat: Int
    public var modelList: [Model]

    private enum CodingKeys: String, CodingKey {
        case device, metadataFormat = "metadata_format", modelList = "model_list"
    }

    /// Reads and checks `<bundleDir>/lowbit-app-config.json`.
    public static func load(bundleDir: URL) throws -> AppConfig {
        let url = bundleDir.appendingPathComponent(fileName)
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw LowbitError(message: "cannot read \(url.path): add dist/bundle to the app as a folder reference",
                              type: "config_error")
        }
        let config: AppConfig
        do {
            config = try JSONDecoder().decode(AppConfig.self, from: data)
        } catch {
            throw LowbitError(message: "\(url.lastPathComponent) is not a lowbit app config (\(error.localizedDescription))",
                              type: "config_error")
        }
        try config.check()
        return config
    }

    /// Reads the app config from the folder reference `folder` in `bundle` (default: main, "bundle").
    public static func load(bundle: Bundle = .main, folder: String = "bundle") throws -> AppConfig {
        try load(bundleDir: bundle.bundleURL.appendingPathComponent(folder, isDirectory: true))
    }

    func check() throws {
        guard device == "iphone" else {
            throw LowbitError(message: "the app config is for device '\(device)', not iphone: run `lowbit package` with \"device\": \"iphone\"",
                              type: "config_error")
        }
        guard metadataFormat <= AppConfig.supportedMetadataFormat else {
            throw LowbitError(message: "the app config has metadata format \(metadataFormat), newer than this LowbitEngine "
                                + "understands (\(AppConfig.supportedMetadataFormat)): update apps/ios from the same lowbit",
                              type: "config_error")
        }
        for model in modelList where !model.modelLib.hasPrefix("system://") {
            throw LowbitError(message: "model \(model.modelID): model_lib '\(model.modelLib)' is not system://PREFIX",
                              type: "config_error")
        }
    }
}

extension AppConfig.Model {
    /// The model's weight folder: `<bundleDir>/<model_path>` when bundled, else
    /// `<documentsDir>/<model_id>` (weights the app downloaded or the user copied in).
    public func weightDirectory(bundleDir: URL, documentsDir: URL) -> URL {
        if let modelPath {
            return bundleDir.appendingPathComponent(modelPath, isDirectory: true)
        }
        return documentsDir.appendingPathComponent(modelID, isDirectory: true)
    }
}
