package ai.bittybot;

import java.util.concurrent.atomic.AtomicBoolean;

/**
 * BittyBot's on-device chat and translation engine (the native library
 * {@code libbittybot_android.so}: the guest component in wasmtime, llama.cpp).
 *
 * <pre>{@code
 * BittyBot bot = BittyBot.create(context.getFilesDir() + "/bittybot", null);
 * // Optional: bot.setModelPath(file) for a model already on the device;
 * // without it start() downloads and verifies the spec's model.
 * bot.start(stateListener);                 // returns at once; onReady() when loaded
 * bot.send(BittyBot.CHAT, "Hello!", replyListener);
 * ...
 * bot.close();
 * }</pre>
 *
 * <p>Every method returns quickly and may be called from any thread.
 * Listeners are called on the engine's own worker thread, never on the
 * caller's: post to the UI thread from there. Errors are
 * {@link BittyBotException}s (with a {@link BittyBotException#kind()}) or
 * {@code onError(kind, message)} calls; a closed handle is an exception of
 * kind {@code closed}. Call {@link #close()}: the worker thread is attached
 * to the JVM until then.
 */
public final class BittyBot implements AutoCloseable {
    /** The chat session. */
    public static final int CHAT = 0;
    /** The translation session. */
    public static final int TRANSLATION = 1;

    static {
        System.loadLibrary("bittybot_android");
    }

    private final long handle;
    private final AtomicBoolean closed = new AtomicBoolean();

    BittyBot(long handle) {
        this.handle = handle;
    }

    /**
     * A new engine. Nothing heavy happens here or in {@link #start}.
     *
     * @param dataDir the app's private folder for BittyBot ({@code models/},
     *     {@code state/} and the compiled-guest {@code cache/} go under it)
     * @param guestPath a guest {@code .wasm} to run, or null for the one built into the library
     */
    public static BittyBot create(String dataDir, String guestPath) {
        return new BittyBot(nativeCreate(dataDir, guestPath));
    }

    /**
     * A GGUF model file to load instead of the app's own model (which is
     * downloaded and verified into {@code dataDir/models} when no path is
     * set). Call before {@link #start}.
     */
    public void setModelPath(String path) {
        nativeSetModelPath(handle, path);
    }

    /**
     * Also allow model downloads from URLs starting with {@code urlPrefix}
     * (by default only the built-in model's release location, over HTTPS).
     * {@code allowPrivateAddresses} lets downloads reach loopback and private
     * addresses (a local server, a LAN mirror). Call before {@link #start}.
     */
    public void allowDownloadsFrom(String urlPrefix, boolean allowPrivateAddresses) {
        nativeAllowDownloads(handle, urlPrefix, allowPrivateAddresses);
    }

    /**
     * Replace the built-in model spec (JSON: url, file_name, size, sha256, and
     * optionally free_space_margin, retries, retry_base_ms) used to download
     * and verify the model when no model path is set. Call before {@link #start}.
     */
    public void setModelSpec(String json) {
        nativeSetModelSpec(handle, json);
    }

    /**
     * Generation settings of a session: most new tokens per reply and the
     * sampling temperature (0 = greedy). A negative value leaves a setting as it is.
     */
    public void configure(int sessionKind, int maxTokens, float temperature) {
        nativeConfigure(handle, sessionKind, maxTokens, temperature);
    }

    /**
     * Start the engine in the background and return at once. The listener
     * sees checking, (downloading, verifying,) loading, then ready or error.
     */
    public void start(StateListener listener) {
        nativeStart(handle, listener);
    }

    /**
     * Send a message to the chat or translation session. The reply streams
     * to {@code listener} from the worker thread: {@code onChunk} any number
     * of times, then exactly one of {@code onDone} or {@code onError}.
     * Turns run one at a time, in order.
     */
    public void send(int sessionKind, String text, ReplyListener listener) {
        nativeSend(handle, sessionKind, text, listener == null ? null : new ReplyBridge(listener));
    }

    /**
     * Stop the reply being generated (it ends with {@code onDone} and
     * {@code stats.stop == "cancelled"}) and drop the turns queued before
     * this call ({@code onError("cancelled", ...)}).
     */
    public void cancel() {
        nativeCancel(handle);
    }

    /** Forget a session's conversation. */
    public void reset(int sessionKind) {
        nativeReset(handle, sessionKind);
    }

    /**
     * The translation session's languages (names or codes, e.g. "French" or
     * "fr"); {@code from} null = detect. A new pair starts a fresh
     * conversation; an unknown language fails the next translation turn with
     * {@code invalid-argument}.
     */
    public void setTranslationPair(String from, String to) {
        nativeSetTranslationPair(handle, from, to);
    }

    /**
     * Cancel what is running, end queued turns with {@code closed}, stop the
     * worker thread and free the native side. Idempotent; any other call
     * afterwards throws a {@code closed} BittyBotException.
     */
    @Override
    public void close() {
        if (closed.compareAndSet(false, true)) {
            nativeClose(handle);
        }
    }

    /** The native handle (tests). */
    long handle() {
        return handle;
    }

    private static native long nativeCreate(String dataDir, String guestPath);
    private static native void nativeSetModelPath(long handle, String path);
    private static native void nativeSetModelSpec(long handle, String json);
    private static native void nativeAllowDownloads(long handle, String urlPrefix, boolean allowPrivate);
    private static native void nativeConfigure(long handle, int kind, int maxTokens, float temperature);
    private static native void nativeStart(long handle, StateListener listener);
    private static native void nativeSend(long handle, int kind, String text, ReplyBridge reply);
    private static native void nativeCancel(long handle);
    private static native void nativeReset(long handle, int kind);
    private static native void nativeSetTranslationPair(long handle, String from, String to);
    private static native void nativeClose(long handle);

    /**
     * Test only: panics inside native code (must become a BittyBotException
     * of kind "panic"). Exists only in a library built with the
     * {@code jvm-test} feature; elsewhere it throws UnsatisfiedLinkError.
     */
    static native void nativeTestPanic();
}
