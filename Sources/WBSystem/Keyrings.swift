import CWBNative

/// Kernel keyrings (keyctl).
public enum Keyrings {
    /// The serial of wb's own session keyring, or nil.
    public static func session() -> Int32? {
        var id: Int32 = 0
        return wb_session_keyring(&id) == 0 ? id : nil
    }
}
