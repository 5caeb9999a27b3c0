package ai.bittybot;

/** Figures of one reply. */
public final class Stats {
    /** Why the reply ended: end-of-generation, max-tokens, stop-string or cancelled. */
    public final String stop;
    /** Prompt tokens evaluated for this turn (new tokens only when the cache was reused). */
    public final int promptTokens;
    /** Tokens generated. */
    public final int generatedTokens;
    /** Tokens in the session's cache after the turn. */
    public final int kvTokens;
    /** Earlier turns dropped to make room. */
    public final int droppedTurns;
    /** Milliseconds from send to the first visible text. */
    public final double ttftMs;
    /** Milliseconds evaluating the prompt. */
    public final double promptMs;
    /** Milliseconds generating after the first token. */
    public final double decodeMs;
    /** Prompt tokens per second. */
    public final double promptTokensPerSecond;
    /** Generated tokens per second. */
    public final double decodeTokensPerSecond;
    /** The system turn came from the saved prefix (memory or disk) instead of being evaluated. */
    public final boolean prefixCached;
    /**
     * Whether the model can stay in memory on this device: false when memory was found too short (by the
     * device-fit check at load, until a reply shows otherwise; by a reply that ended with the model paged
     * out; or by a warm pass that could not bring it back), so replies will be slow (worth telling the user).
     */
    public final boolean canStayResident;

    Stats(String stop, int promptTokens, int generatedTokens, int kvTokens, int droppedTurns, double ttftMs,
            double promptMs, double decodeMs, double promptTokensPerSecond, double decodeTokensPerSecond,
            boolean prefixCached, boolean canStayResident) {
        this.stop = stop;
        this.promptTokens = promptTokens;
        this.generatedTokens = generatedTokens;
        this.kvTokens = kvTokens;
        this.droppedTurns = droppedTurns;
        this.ttftMs = ttftMs;
        this.promptMs = promptMs;
        this.decodeMs = decodeMs;
        this.promptTokensPerSecond = promptTokensPerSecond;
        this.decodeTokensPerSecond = decodeTokensPerSecond;
        this.prefixCached = prefixCached;
        this.canStayResident = canStayResident;
    }

    @Override
    public String toString() {
        return String.format(java.util.Locale.ROOT,
                "Stats{stop=%s, prompt=%d tok (%.1f tok/s), generated=%d tok (%.1f tok/s), kv=%d, dropped=%d, ttft=%.0f ms, prefix=%s, memory=%s}",
                stop, promptTokens, promptTokensPerSecond, generatedTokens, decodeTokensPerSecond, kvTokens,
                droppedTurns, ttftMs, prefixCached ? "cached" : "evaluated", canStayResident ? "resident" : "paging");
    }
}
