import ai.lowbit.AppConfig;
import ai.lowbit.ChunkListener;
import ai.lowbit.LowbitEngine;
import ai.lowbit.LowbitException;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;

/**
 * Drives ai.lowbit.LowbitEngine on the host JVM (tests/apps/test_android_jni.py).
 *
 * <p>Usage: JniCheck MODEL_DIR WORK_DIR. Reads WORK_DIR/lowbit-app-config.json (its first model is
 * the one linked in), runs every WORK_DIR/{chat,completion}-*.request.json in name order, writing
 * the streamed chunks to *.chunks (one per line) for the test to compare with the Python engine,
 * then checks errors, Unicode, abort and close; prints "jni: N passed, M failed" and exits 1 on a
 * failure.
 */
public final class JniCheck {
    private static int passed;
    private static final List<String> failures = new ArrayList<>();

    private static void expect(boolean ok, String what) {
        if (ok) {
            passed++;
        } else {
            failures.add(what);
            System.out.println("FAILED: " + what);
        }
    }

    public static void main(String[] args) throws Exception {
        String modelDir = args[0];
        Path work = Paths.get(args[1]);
        String modelLib = readAppConfig(work);
        try (LowbitEngine engine = new LowbitEngine(modelDir, modelLib, "{\"check_md5\": true}")) {
            runRequests(engine, work);
            checkUnicodeError(engine);
            checkAbortFromListener(engine);
            checkListenerException(engine);
            checkMisuse(engine);
        }
        checkBadCreate(modelDir, modelLib, work);
        checkClose(modelDir, modelLib);
        System.out.println("jni: " + passed + " passed, " + failures.size() + " failed");
        System.exit(failures.isEmpty() ? 0 : 1);
    }

    /** The first model's library, after checking what AppConfig reads of the file. */
    private static String readAppConfig(Path work) throws IOException, LowbitException {
        String json = new String(Files.readAllBytes(work.resolve("lowbit-app-config.json")), StandardCharsets.UTF_8);
        AppConfig config = AppConfig.parse(json);
        AppConfig.Model bundled = config.models.get(0);
        AppConfig.Model pushed = config.models.get(1);
        expect(config.models.size() == 2 && bundled.modelPath.equals(bundled.modelId) && pushed.modelPath == null
                && pushed.estimatedVramBytes == 3_000_000_000L && pushed.modelId.equals("caf\u00E9-\uD83D\uDE00"),
                "the app config's models");
        try {
            AppConfig.parse(json.replace("\"metadata_format\": 2", "\"metadata_format\": 3"));
            expect(false, "another metadata format is refused");
        } catch (LowbitException e) {
            expect(e.getMessage().contains("metadata_format 3"), "metadata format: " + e.getMessage());
        }
        return bundled.modelLib;
    }

    private static void runRequests(LowbitEngine engine, Path work) throws IOException, LowbitException {
        List<Path> requests = new ArrayList<>();
        try (DirectoryStream<Path> found = Files.newDirectoryStream(work, "*.request.json")) {
            found.forEach(requests::add);
        }
        requests.sort(null);
        for (Path request : requests) {
            String name = request.getFileName().toString().replace(".request.json", "");
            String json = new String(Files.readAllBytes(request), StandardCharsets.UTF_8);
            List<String> chunks = new ArrayList<>();
            if (name.startsWith("chat-")) {
                engine.chatCompletion(json, chunks::add);
            } else {
                engine.completion(json, chunks::add);
            }
            Files.write(work.resolve(name + ".chunks"), chunks, StandardCharsets.UTF_8);
        }
        expect(!requests.isEmpty(), "requests to run");
    }

    /** A role outside the BMP goes to the engine and comes back in its error, both as UTF-8. */
    private static void checkUnicodeError(LowbitEngine engine) {
        String role = "robot\uD83D\uDE00\u00FC";
        List<String> chunks = new ArrayList<>();
        try {
            engine.chatCompletion("{\"messages\": [{\"role\": \"" + role + "\", \"content\": \"x\"}]}", chunks::add);
            expect(false, "an unknown role is refused");
        } catch (LowbitException e) {
            expect(e.getMessage().contains("role \"" + role + "\" is not supported"), "the error names the role: " + e.getMessage());
            expect(chunks.size() == 1 && chunks.get(0).contains("\"error\"") && chunks.get(0).contains(role),
                    "one error chunk naming the role: " + chunks);
        }
    }

    private static void checkAbortFromListener(LowbitEngine engine) throws LowbitException {
        List<String> chunks = new ArrayList<>();
        ChunkListener abortOnFirst = chunk -> {
            if (chunks.isEmpty()) {
                engine.abort();
            }
            chunks.add(chunk);
        };
        engine.completion("{\"prompt\": \"Once upon a time\", \"temperature\": 0, \"max_tokens\": 64}", abortOnFirst);
        String last = chunks.get(chunks.size() - 1);
        expect(chunks.size() <= 3 && String.join("", chunks).contains("\"finish_reason\":\"interrupted\"")
                && last.contains("\"usage\""), "abort from the listener ends the reply: " + chunks);
    }

    private static void checkListenerException(LowbitEngine engine) throws LowbitException {
        RuntimeException thrown = new IllegalStateException("the listener gives up");
        try {
            engine.completion("{\"prompt\": \"Once upon a time\", \"max_tokens\": 64}", chunk -> {
                throw thrown;
            });
            expect(false, "the listener's exception propagates");
        } catch (IllegalStateException e) {
            expect(e == thrown, "the listener's own exception reaches the caller: " + e);
        }
        List<String> chunks = new ArrayList<>();
        engine.completion("{\"prompt\": \"Once upon a time\", \"temperature\": 0, \"max_tokens\": 4}", chunks::add);
        expect(chunks.get(chunks.size() - 1).contains("\"completion_tokens\":4"), "the engine answers after: " + chunks);
    }

    private static void checkMisuse(LowbitEngine engine) throws LowbitException {
        try {
            engine.completion("{\"prompt\": \"a\u0000b\"}", chunk -> { });
            expect(false, "a NUL in the request is refused");
        } catch (IllegalArgumentException e) {
            expect(e.getMessage().contains("NUL"), "NUL: " + e.getMessage());
        }
        try {
            engine.completion("{\"prompt\": \"Once\", \"max_tokens\": 2}", chunk -> engine.close());
            expect(false, "close() from a listener is refused");
        } catch (IllegalStateException e) {
            expect(e.getMessage().contains("close() from a listener"), "close in a listener: " + e.getMessage());
        }
    }

    private static void checkBadCreate(String modelDir, String modelLib, Path work) {
        String[][] cases = {
            {work.resolve("nowhere").toString(), modelLib, "is not an MLC model folder"},
            {modelDir, "system://no_such_prefix_", "no model with system_lib_prefix 'no_such_prefix_' is linked"},
            {modelDir, modelLib, "unknown or invalid engine option 'gpu'", "{\"gpu\": 1}"},
        };
        for (String[] c : cases) {
            try {
                new LowbitEngine(c[0], c[1], c.length > 3 ? c[3] : null).close();
                expect(false, "create(" + c[0] + ", " + c[1] + ") fails");
            } catch (LowbitException e) {
                String message = e.getMessage();
                System.out.println("create error: " + message);
                expect(message.contains(c[2]) && !message.contains("\n"), "one line naming the fault: " + message);
            }
        }
    }

    private static void checkClose(String modelDir, String modelLib) throws LowbitException {
        LowbitEngine engine = new LowbitEngine(modelDir, modelLib, null);
        engine.close();
        engine.close();
        engine.abort();
        try {
            engine.completion("{\"prompt\": \"x\"}", chunk -> { });
            expect(false, "a closed engine refuses requests");
        } catch (IllegalStateException e) {
            expect(e.getMessage().contains("closed"), "closed: " + e.getMessage());
        }
    }
}
