package ai.bittybot;

/** A failed call into BittyBot, with a stable {@link #kind()} to branch on. */
public final class BittyBotException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    private final String kind;

    /** Thrown by the native library. */
    public BittyBotException(String kind, String message) {
        super(kind + ": " + message);
        this.kind = kind;
    }

    /**
     * What went wrong: {@code closed} (closed or unknown handle),
     * {@code invalid-argument} (e.g. a null string), {@code not-ready}
     * (send before start), {@code panic} (a native bug, caught), ...
     */
    public String kind() {
        return kind;
    }
}
