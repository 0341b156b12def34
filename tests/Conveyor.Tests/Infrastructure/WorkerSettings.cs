using Conveyor.Tests.Fakes;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Worker settings tests commonly need.</summary>
public static class WorkerSettings
{
    public const string SigningSecret = "test-signing-secret-0123456789";

    public static Dictionary<string, string?> With(FakePaymentGateway? gateway = null, string? callerToken = null) => new()
    {
        ["PaymentGateway:BaseUrl"] = gateway?.BaseAddress.ToString(),
        ["PaymentGateway:ApiKey"] = callerToken,
        ["PaymentGateway:TimeoutSeconds"] = "5",
        ["Webhooks:SigningSecret"] = SigningSecret,
        ["Webhooks:TimeoutSeconds"] = "5",
        // The fake webhook receivers listen on loopback.
        ["Webhooks:AllowPrivateNetworks"] = "true",
    };

    /// <summary>Sets each of <paramref name="overrides"/> in <paramref name="settings"/>; returns them.</summary>
    public static Dictionary<string, string?> Override(this Dictionary<string, string?> settings, params (string Key, string Value)[] overrides)
    {
        foreach (var (key, value) in overrides)
        {
            settings[key] = value;
        }

        return settings;
    }
}
