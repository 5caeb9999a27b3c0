package ai.bittybot;

/**
 * What the native side calls for a reply: builds the {@link Stats} object
 * in Java (so the worker thread needs no class lookup, which on Android
 * would go through the system class loader) and forwards to the app's listener.
 */
final class ReplyBridge {
    private final ReplyListener listener;

    ReplyBridge(ReplyListener listener) {
        this.listener = listener;
    }

    void onChunk(String text) {
        listener.onChunk(text);
    }

    void onDone(String stop, int promptTokens, int generatedTokens, int kvTokens, int droppedTurns, double ttftMs,
            double promptMs, double decodeMs, double promptTokensPerSecond, double decodeTokensPerSecond,
            boolean prefixCached, boolean canStayResident) {
        listener.onDone(new Stats(stop, promptTokens, generatedTokens, kvTokens, droppedTurns, ttftMs, promptMs,
                decodeMs, promptTokensPerSecond, decodeTokensPerSecond, prefixCached, canStayResident));
    }

    void onError(String kind, String message) {
        listener.onError(kind, message);
    }
}
