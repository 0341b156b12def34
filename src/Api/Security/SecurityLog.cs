namespace Conveyor.Api.Security;

internal static partial class SecurityLog
{
    // The key's name and configuration path only: never the key.
    [LoggerMessage(EventId = 2501, Level = LogLevel.Warning,
        Message = "API key {KeyName} ({ConfigurationPath}) has scopes no endpoint checks: {UnknownScopes}; they grant nothing (known scopes: {KnownScopes})")]
    public static partial void UnknownScopes(ILogger logger, string keyName, string configurationPath, string unknownScopes, string knownScopes);

    // Once per lockout, not per refused request: an attack must not flood the log.
    [LoggerMessage(EventId = 2502, Level = LogLevel.Warning,
        Message = "Too many failed authentications ({Kind}) from {Client}: its unknown keys are refused with 429 for {LockoutSeconds} s (valid keys are still accepted)")]
    public static partial void LockedOut(ILogger logger, string kind, string client, string lockoutSeconds);
}
