namespace Conveyor.Api.Security;

internal static partial class SecurityLog
{
    // The key's name and configuration path only: never the key.
    [LoggerMessage(EventId = 2501, Level = LogLevel.Warning,
        Message = "API key {KeyName} ({ConfigurationPath}) has scopes no endpoint checks: {UnknownScopes}; they grant nothing (known scopes: {KnownScopes})")]
    public static partial void UnknownScopes(ILogger logger, string keyName, string configurationPath, string unknownScopes, string knownScopes);
}
