package ai.bittybot;

/**
 * One reply, called on the engine's worker thread: {@code onChunk} any
 * number of times, then exactly one of {@code onDone} or {@code onError}.
 * An exception thrown by {@code onChunk} cancels the reply, which then ends
 * with {@code onError("listener", ...)}.
 */
public interface ReplyListener {
    /** The next piece of visible text. */
    void onChunk(String text);

    /** The reply ended; {@link Stats#stop} says why ("cancelled" after {@link BittyBot#cancel}). */
    void onDone(Stats stats);

    /**
     * The turn failed. Kinds: {@code not-ready}, {@code input-too-long},
     * {@code invalid-argument}, {@code inference}, {@code guest},
     * {@code cancelled} (dropped before it started), {@code closed},
     * {@code listener}, {@code panic}, ...
     */
    void onError(String kind, String message);
}
