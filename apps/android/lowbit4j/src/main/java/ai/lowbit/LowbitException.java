package ai.lowbit;

/** A failure of the native engine, in its one-line message. */
public class LowbitException extends Exception {
    private static final long serialVersionUID = 1L;

    public LowbitException(String message) {
        super(message);
    }
}
