package ai.bittybot;

import com.sun.net.httpserver.HttpServer;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Collectors;

/**
 * The Java API on a real JVM with the real native library, the built-in
 * guest and the demo model. Plain Java: each check prints PASS or FAIL,
 * the run ends with "N passed, M failed" and exits non-zero on a failure.
 *
 * <pre>scripts/jvm-test.sh</pre> builds everything and runs
 * <pre>java -Djava.library.path=target/release -cp target/jvm ai.bittybot.BittyBotTest MODEL.gguf</pre>
 */
public final class BittyBotTest {
    private static final long WAIT_S = 120;
    private static String model;
    private static Path work;
    private static int passed;
    private static int failed;

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: BittyBotTest MODEL.gguf");
            System.exit(2);
        }
        model = args[0];
        work = Files.createTempDirectory("bittybot-jvm-test-");

        long t0 = System.nanoTime();
        check("the native library loads", () -> {
            try {
                Class.forName("ai.bittybot.BittyBot");
            } catch (ClassNotFoundException e) {
                throw new AssertionError(e);
            }
            return String.format("System.loadLibrary + class init %.1f ms", ms(t0));
        });

        BittyBot bot = BittyBot.create(dir("main"), null);
        States states = new States();
        check("create + start return at once; the listener sees checking, loading, ready", () -> {
            // A fresh instance (and data dir: the guest compiles) for the timing.
            BittyBot timed = null;
            States s = new States();
            long t = System.nanoTime();
            timed = BittyBot.create(dir("timing"), null);
            timed.setModelPath(model);
            timed.start(s);
            double startMs = ms(t);
            System.out.printf("  start() latency: create + setModelPath + start = %.2f ms%n", startMs);
            boolean readyAlready = s.done.getCount() == 0;
            await(s.done, "ready");
            double readyMs = ms(t);
            timed.close();
            expect(startMs < 50, "create + start took " + startMs + " ms");
            expect(!readyAlready, "the model was loaded before start() returned");
            expect(s.events.equals(List.of("checking", "loading", "ready")), "states " + s.events);
            expect(!s.thread.equals(Thread.currentThread().getName()), "listener ran on the caller's thread");
            return String.format("start() %.2f ms, ready after %.0f ms on thread '%s': %s", startMs, readyMs,
                    s.thread, s.ready);
        });

        bot.setModelPath(model);
        bot.configure(BittyBot.CHAT, 48, 0f);
        bot.start(states);
        await(states.done, "ready");

        check("a chat turn streams chunks and ends with stats", () -> {
            Reply r = turn(bot, BittyBot.CHAT, "What is the capital of France? Answer in one sentence.");
            expect(r.error == null, "error " + r.error);
            expect(r.chunks.size() > 1, "chunks " + r.chunks);
            expect(r.stats != null && r.stats.generatedTokens > 0 && r.stats.ttftMs > 0, "stats " + r.stats);
            expect(r.text().contains("Paris"), "reply " + r.text());
            expect(!r.thread.equals(Thread.currentThread().getName()), "callbacks on the caller's thread");
            return r.chunks.size() + " chunks, \"" + r.text().trim() + "\" " + r.stats;
        });

        check("a translation turn", () -> {
            bot.configure(BittyBot.TRANSLATION, 32, 0f);
            bot.setTranslationPair("English", "French");
            Reply r = turn(bot, BittyBot.TRANSLATION, "Good morning");
            expect(r.error == null, "error " + r.error);
            expect(r.stats != null && !r.text().isBlank(), "reply " + r.text() + " " + r.stats);
            return "\"" + r.text().trim() + "\" " + r.stats;
        });

        check("cancel() mid-reply ends with stop=cancelled; the next turn works", () -> {
            bot.configure(BittyBot.CHAT, 400, 0f);
            Reply r = new Reply(3);
            bot.send(BittyBot.CHAT, "Write a long story about a dragon who learns to cook.", r);
            await(r.firstChunks, "three chunks");
            bot.cancel();
            await(r.done, "the end of the cancelled reply");
            expect(r.error == null, "error " + r.error);
            expect("cancelled".equals(r.stats.stop), "stats " + r.stats);
            expect(r.stats.generatedTokens < 400, "stats " + r.stats);
            bot.configure(BittyBot.CHAT, 24, 0f);
            Reply next = turn(bot, BittyBot.CHAT, "Name one colour.");
            expect(next.error == null && next.stats != null && !"cancelled".equals(next.stats.stop),
                    "next turn " + next.error + " " + next.stats);
            return "cancelled after " + r.stats.generatedTokens + " tokens; next: \"" + next.text().trim() + "\"";
        });

        check("cancel() also drops a queued turn (onError cancelled)", () -> {
            bot.configure(BittyBot.CHAT, 200, 0f);
            Reply first = new Reply(1);
            Reply queued = new Reply(1);
            bot.send(BittyBot.CHAT, "Tell me about the sea.", first);
            bot.send(BittyBot.CHAT, "And about the sky.", queued);
            await(first.firstChunks, "a chunk");
            bot.cancel();
            await(first.done, "the first reply");
            await(queued.done, "the queued turn");
            expect(first.stats != null && "cancelled".equals(first.stats.stop), "first " + first.stats);
            expect("cancelled".equals(queued.error), "queued " + queued.error + " " + queued.stats);
            return "queued turn: " + queued.error + " (" + queued.message + ")";
        });

        check("reset() starts the chat afresh", () -> {
            bot.configure(BittyBot.CHAT, 16, 0f);
            bot.reset(BittyBot.CHAT);
            Reply a = turn(bot, BittyBot.CHAT, "Hello!");
            expect(a.stats != null, "error " + a.error);
            // 24 GB here: the 98 MB model stays in memory, and the app is told so.
            expect(a.stats.canStayResident, "paging on this machine: " + a.stats);
            // Without a reset the history grows ...
            Reply more = turn(bot, BittyBot.CHAT, "Hello!");
            expect(more.stats != null && more.stats.kvTokens > a.stats.kvTokens, "no reset: " + more.stats);
            // ... after one, the same turn sees exactly what the first saw: the system turn
            // (restored, not evaluated again) and nothing of the earlier talk.
            bot.reset(BittyBot.CHAT);
            Reply b = turn(bot, BittyBot.CHAT, "Hello!");
            expect(b.stats != null, "error " + b.error);
            expect(b.stats.prefixCached, "the system turn was evaluated again: " + b.stats);
            expect(b.stats.kvTokens == a.stats.kvTokens && b.text().equals(a.text()),
                    "after reset " + b.stats + " \"" + b.text() + "\" vs " + a.stats + " \"" + a.text() + "\"");
            return b.stats.toString();
        });

        check("an exception in onChunk cancels the reply: onError(listener), next turn works", () -> {
            bot.configure(BittyBot.CHAT, 64, 0f);
            Reply r = new Reply(1);
            r.throwOnChunk = true;
            bot.send(BittyBot.CHAT, "Count from one to twenty.", r);
            await(r.done, "the end");
            expect("listener".equals(r.error), "error " + r.error + " " + r.stats);
            expect(r.message.contains("IllegalStateException"), "message " + r.message);
            Reply next = turn(bot, BittyBot.CHAT, "Say hi.");
            expect(next.stats != null, "next " + next.error);
            return r.message;
        });

        check("an invalid language pair fails the next translation turn (invalid-argument)", () -> {
            bot.setTranslationPair(null, "   ");
            Reply r = turn(bot, BittyBot.TRANSLATION, "Hello");
            expect("invalid-argument".equals(r.error), "error " + r.error + " " + r.stats);
            bot.setTranslationPair(null, "Spanish");
            Reply ok = turn(bot, BittyBot.TRANSLATION, "Thank you");
            expect(ok.stats != null, "then " + ok.error);
            return r.message + "; then \"" + ok.text().trim() + "\"";
        });

        check("null and out-of-range arguments are invalid-argument exceptions", () -> {
            List<String> kinds = new ArrayList<>();
            kinds.add(kindOf(() -> BittyBot.create(null, null)));
            kinds.add(kindOf(() -> bot.send(BittyBot.CHAT, null, new Reply(1))));
            kinds.add(kindOf(() -> bot.send(BittyBot.CHAT, "hi", null)));
            kinds.add(kindOf(() -> bot.send(7, "hi", new Reply(1))));
            kinds.add(kindOf(() -> bot.setTranslationPair("English", null)));
            kinds.add(kindOf(() -> bot.reset(-1)));
            kinds.add(kindOf(() -> bot.setModelPath(null)));
            expect(Collections.frequency(kinds, "invalid-argument") == kinds.size(), "kinds " + kinds);
            return kinds.toString();
        });

        check("send before start is not-ready; start twice is invalid-argument", () -> {
            try (BittyBot idle = BittyBot.create(dir("idle"), null)) {
                String send = kindOf(() -> idle.send(BittyBot.CHAT, "hi", new Reply(1)));
                expect("not-ready".equals(send), "send " + send);
                // No model path: the download goes to a port nothing listens on.
                idle.setModelSpec(specJson("http://127.0.0.1:" + closedPort() + "/m.gguf", Paths.get(model), 0));
                idle.allowDownloadsFrom("http://127.0.0.1:", true);
                States s = new States();
                idle.start(s);
                String again = kindOf(() -> idle.start(new States()));
                expect("invalid-argument".equals(again), "start again " + again);
                await(s.done, "the end of start-up");
                return "send: " + send + ", second start: " + again + ", no model: " + s.errorKind;
            }
        });

        check("a missing model: onError(load-failed), then turns are not-ready", () -> {
            BittyBot b = BittyBot.create(dir("missing"), null);
            b.setModelPath(work.resolve("no-such-model.gguf").toString());
            States s = new States();
            b.start(s);
            await(s.done, "the end of start-up");
            expect("load-failed".equals(s.errorKind), "state " + s.events + " " + s.errorKind);
            Reply r = turn(b, BittyBot.CHAT, "hi");
            expect("not-ready".equals(r.error), "turn " + r.error);
            b.close();
            return s.errorMessage;
        });

        check("no model path, server unreachable: onError(no-network), nothing left behind", () -> {
            try (BittyBot b = BittyBot.create(dir("nomodel"), null)) {
                b.setModelSpec(specJson("http://127.0.0.1:" + closedPort() + "/m.gguf", Paths.get(model), 0));
                b.allowDownloadsFrom("http://127.0.0.1:", true);
                States s = new States();
                b.start(s);
                await(s.done, "the end of start-up");
                expect("no-network".equals(s.errorKind), "state " + s.events + " " + s.errorKind);
                File[] left = new File(dir("nomodel"), "models").listFiles();
                expect(left != null && left.length == 0, "stray files: " + Arrays.toString(left));
                return s.errorMessage;
            }
        });

        check("no model path: the model is downloaded, verified, loaded, and answers", () -> {
            HttpServer server = serve(Paths.get(model));
            try (BittyBot b = BittyBot.create(dir("download"), null)) {
                String url = "http://127.0.0.1:" + server.getAddress().getPort() + "/m.gguf";
                b.setModelSpec(specJson(url, Paths.get(model), 2));
                b.allowDownloadsFrom("http://127.0.0.1:" + server.getAddress().getPort() + "/", true);
                States s = new States();
                b.start(s);
                await(s.done, "the end of start-up");
                expect(s.ready != null, "state " + s.events + " " + s.errorKind + " " + s.errorMessage);
                expect(s.events.contains("downloading") && s.events.contains("verifying"), "events " + s.events);
                expect(s.maxDownloaded == Files.size(Paths.get(model)), "downloaded " + s.maxDownloaded);
                Reply r = turn(b, BittyBot.CHAT, "Say hi.");
                expect(r.error == null && r.stats != null, "turn " + r.error);
                return s.events.stream().distinct().collect(Collectors.toList()).toString();
            } finally {
                server.stop(0);
            }
        });

        check("a corrupt guest: onError(guest); a missing guest file too", () -> {
            Path bad = work.resolve("corrupt.wasm");
            try {
                Files.write(bad, "\0asm this is not a component".getBytes(StandardCharsets.UTF_8));
            } catch (IOException e) {
                throw new AssertionError(e);
            }
            String first;
            try (BittyBot b = BittyBot.create(dir("corrupt"), bad.toString())) {
                b.setModelPath(model);
                States s = new States();
                b.start(s);
                await(s.done, "the end of start-up");
                expect("guest".equals(s.errorKind), "state " + s.events + " " + s.errorKind);
                first = s.errorMessage;
            }
            try (BittyBot b = BittyBot.create(dir("noguest"), work.resolve("nope.wasm").toString())) {
                b.setModelPath(model);
                States s = new States();
                b.start(s);
                await(s.done, "the end of start-up");
                expect("guest".equals(s.errorKind), "missing file: " + s.events + " " + s.errorKind);
            }
            return first;
        });

        check("close() from inside a listener does not deadlock", () -> {
            BittyBot b = BittyBot.create(dir("selfclose"), null);
            b.setModelSpec(specJson("http://127.0.0.1:" + closedPort() + "/m.gguf", Paths.get(model), 0));
            CountDownLatch closed = new CountDownLatch(1);
            b.start(new StateListener() {
                @Override
                public void onReady(String summary) {}

                @Override
                public void onError(String kind, String message) {
                    b.close();
                    closed.countDown();
                }
            });
            await(closed, "close() inside onError");
            String after = kindOf(() -> b.cancel());
            expect("closed".equals(after), "after " + after);
            return "closed on the worker thread";
        });

        check("a closed or made-up handle is a 'closed' exception; close() twice is fine", () -> {
            BittyBot b = BittyBot.create(dir("closed"), null);
            b.close();
            b.close();
            String send = kindOf(() -> b.send(BittyBot.CHAT, "hi", new Reply(1)));
            String cancel = kindOf(() -> b.cancel());
            String foreign = kindOf(() -> new BittyBot(0x7f00deadbeefL).send(BittyBot.CHAT, "hi", new Reply(1)));
            String zero = kindOf(() -> new BittyBot(0).reset(BittyBot.CHAT));
            List<String> kinds = List.of(send, cancel, foreign, zero);
            expect(kinds.stream().allMatch("closed"::equals), "kinds " + kinds);
            return kinds.toString();
        });

        check("a panic in native code becomes a BittyBotException(panic)", () -> {
            String kind = kindOf(BittyBot::nativeTestPanic);
            expect("panic".equals(kind), "kind " + kind);
            return "kind " + kind;
        });

        check("the engine still answers after all that", () -> {
            bot.configure(BittyBot.CHAT, 16, 0f);
            Reply r = turn(bot, BittyBot.CHAT, "Say yes.");
            expect(r.stats != null, "error " + r.error);
            bot.close();
            String after = kindOf(() -> bot.send(BittyBot.CHAT, "hi", new Reply(1)));
            expect("closed".equals(after), "after close " + after);
            return "\"" + r.text().trim() + "\"";
        });

        System.out.printf("%d passed, %d failed%n", passed, failed);
        System.exit(failed == 0 ? 0 : 1);
    }

    // --- helpers ---------------------------------------------------------

    interface Check {
        String run() throws Exception;
    }

    private static void check(String name, Check c) {
        long t = System.nanoTime();
        try {
            String detail = c.run();
            passed++;
            System.out.printf("PASS %s (%.0f ms): %s%n", name, ms(t), detail);
        } catch (Throwable e) {
            failed++;
            System.out.printf("FAIL %s (%.0f ms): %s%n", name, ms(t), e);
            e.printStackTrace(System.out);
        }
        System.out.flush();
    }

    private static void expect(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private static double ms(long since) {
        return (System.nanoTime() - since) / 1e6;
    }

    private static String dir(String name) {
        return work.resolve(name).toString();
    }

    private static void await(CountDownLatch latch, String what) {
        try {
            if (!latch.await(WAIT_S, TimeUnit.SECONDS)) {
                throw new AssertionError("timed out waiting for " + what);
            }
        } catch (InterruptedException e) {
            throw new AssertionError(e);
        }
    }

    /** The kind of the BittyBotException `r` throws (fails if none). */
    private static String kindOf(Runnable r) {
        try {
            r.run();
        } catch (BittyBotException e) {
            return e.kind();
        }
        throw new AssertionError("no BittyBotException");
    }

    private static Reply turn(BittyBot bot, int kind, String text) {
        Reply r = new Reply(1);
        bot.send(kind, text, r);
        await(r.done, "the reply to \"" + text + "\"");
        return r;
    }

    /** A model spec for a file served at url. */
    static String specJson(String url, Path file, int retries) {
        try {
            byte[] bytes = Files.readAllBytes(file);
            byte[] sum = MessageDigest.getInstance("SHA-256").digest(bytes);
            StringBuilder hex = new StringBuilder();
            for (byte x : sum) {
                hex.append(String.format("%02x", x));
            }
            return "{\"url\":\"" + url + "\",\"file_name\":\"demo.gguf\",\"size\":" + bytes.length
                + ",\"sha256\":\"" + hex + "\",\"free_space_margin\":1024,\"retries\":" + retries
                + ",\"retry_base_ms\":20}";
        } catch (IOException | NoSuchAlgorithmException e) {
            throw new AssertionError(e);
        }
    }

    /** A port nothing listens on. */
    static int closedPort() {
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        } catch (IOException e) {
            throw new AssertionError(e);
        }
    }

    /** The JDK's HTTP server on loopback, serving one file at /m.gguf. */
    static HttpServer serve(Path file) {
        try {
            HttpServer server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
            server.createContext("/m.gguf", ex -> {
                byte[] body = Files.readAllBytes(file);
                ex.sendResponseHeaders(200, body.length);
                try (OutputStream out = ex.getResponseBody()) {
                    out.write(body);
                }
            });
            server.start();
            return server;
        } catch (IOException e) {
            throw new AssertionError(e);
        }
    }

    static final class States implements StateListener {
        final List<String> events = Collections.synchronizedList(new ArrayList<>());
        final CountDownLatch done = new CountDownLatch(1);
        volatile String thread;
        volatile String ready;
        volatile String errorKind;
        volatile String errorMessage;

        @Override
        public void onChecking() {
            thread = Thread.currentThread().getName();
            events.add("checking");
        }

        volatile long maxDownloaded;

        @Override
        public void onDownloading(long done, long total, double bytesPerSecond) {
            maxDownloaded = Math.max(maxDownloaded, done);
            events.add("downloading");
        }

        @Override
        public void onVerifying(long done, long total) {
            events.add("verifying");
        }

        @Override
        public void onLoading() {
            events.add("loading");
        }

        @Override
        public void onReady(String summary) {
            ready = summary;
            events.add("ready");
            done.countDown();
        }

        @Override
        public void onError(String kind, String message) {
            errorKind = kind;
            errorMessage = message;
            events.add("error");
            done.countDown();
        }
    }

    static final class Reply implements ReplyListener {
        final List<String> chunks = Collections.synchronizedList(new ArrayList<>());
        final CountDownLatch firstChunks;
        final CountDownLatch done = new CountDownLatch(1);
        final AtomicInteger finals = new AtomicInteger();
        volatile boolean throwOnChunk;
        volatile String thread;
        volatile Stats stats;
        volatile String error;
        volatile String message;

        Reply(int chunksToWaitFor) {
            firstChunks = new CountDownLatch(chunksToWaitFor);
        }

        String text() {
            return String.join("", chunks);
        }

        @Override
        public void onChunk(String text) {
            thread = Thread.currentThread().getName();
            chunks.add(text);
            firstChunks.countDown();
            if (throwOnChunk) {
                throw new IllegalStateException("the app's onChunk failed");
            }
        }

        @Override
        public void onDone(Stats s) {
            stats = s;
            finish();
        }

        @Override
        public void onError(String kind, String msg) {
            error = kind;
            message = msg;
            finish();
        }

        private void finish() {
            if (finals.incrementAndGet() != 1) {
                System.out.println("  BUG: a second final callback");
            }
            done.countDown();
        }
    }
}
