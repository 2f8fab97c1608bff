package ai.lowbit;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/** The models an app was packaged with: lowbit-app-config.json, as `lowbit package` writes it. */
public final class AppConfig {
    /** The library metadata format this lowbit4j's engine reads; `lowbit package` records its own. */
    public static final long METADATA_FORMAT = 2;

    /** One packaged model. */
    public static final class Model {
        public final String modelId;
        /** "system://PREFIX": the model's code, linked into liblowbit_jni.so. */
        public final String modelLib;
        public final long estimatedVramBytes;
        /** The weights' folder under the app's assets, or null when they are not bundled. */
        public final String modelPath;

        Model(String modelId, String modelLib, long estimatedVramBytes, String modelPath) {
            this.modelId = modelId;
            this.modelLib = modelLib;
            this.estimatedVramBytes = estimatedVramBytes;
            this.modelPath = modelPath;
        }
    }

    public final List<Model> models;

    private AppConfig(List<Model> models) {
        this.models = Collections.unmodifiableList(models);
    }

    /** Reads the file's text; a file this lowbit4j cannot use is one line of {@link LowbitException}. */
    public static AppConfig parse(String json) throws LowbitException {
        try {
            Map<?, ?> root = (Map<?, ?>) Json.parse(json);
            Object format = root.get("metadata_format");
            if (!Long.valueOf(METADATA_FORMAT).equals(format)) {
                throw new LowbitException("lowbit-app-config.json has metadata_format " + format + ", this app reads "
                        + METADATA_FORMAT + ": package with the lowbit version of this template");
            }
            if (!"android".equals(root.get("device"))) {
                throw new LowbitException("lowbit-app-config.json is for device " + root.get("device") + ", not android");
            }
            List<Model> models = new ArrayList<>();
            for (Object item : (List<?>) root.get("model_list")) {
                Map<?, ?> model = (Map<?, ?>) item;
                String modelId = (String) model.get("model_id");
                String modelLib = (String) model.get("model_lib");
                Object vram = model.get("estimated_vram_bytes");
                if (modelId == null || modelLib == null || !(vram instanceof Long)) {
                    throw new LowbitException("lowbit-app-config.json: a model lacks model_id, model_lib or estimated_vram_bytes");
                }
                models.add(new Model(modelId, modelLib, (Long) vram, (String) model.get("model_path")));
            }
            return new AppConfig(models);
        } catch (IllegalArgumentException | ClassCastException | NullPointerException e) {
            throw new LowbitException("lowbit-app-config.json is not an app config (" + e.getMessage() + ")");
        }
    }
}
