package ai.bittybot;

/**
 * Start-up states of a {@link BittyBot}, called on its worker thread, in
 * order: checking, (downloading, verifying,) loading, then ready or error.
 * Downloading and verifying happen when no model path was set: the app's
 * model is downloaded (resuming a partial download) and/or hashed.
 */
public interface StateListener {
    /** Starting the engine and looking for the model. */
    default void onChecking() {}

    /** Downloading the model: bytes done, total, recent speed. */
    default void onDownloading(long done, long total, double bytesPerSecond) {}

    /** Checking the model file's SHA-256. */
    default void onVerifying(long done, long total) {}

    /** Loading the model. */
    default void onLoading() {}

    /** Ready for {@link BittyBot#send}; {@code summary} names the model and settings. */
    void onReady(String summary);

    /**
     * Start-up failed: {@code kind} is e.g. {@code load-failed}, {@code no-model},
     * {@code guest}, {@code io}; every later turn fails with {@code not-ready}.
     */
    void onError(String kind, String message);
}
