using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Payments;

/// <summary>Section <c>PaymentGateway</c>. An empty <see cref="BaseUrl"/> selects the simulated gateway (test mode).</summary>
public sealed class PaymentGatewayOptions
{
    public const string SectionName = "PaymentGateway";

    public string? BaseUrl { get; set; }

    /// <summary>Sent as a bearer token when set; from the environment only.</summary>
    public string? ApiKey { get; set; }

    [Range(1, 300)]
    public int TimeoutSeconds { get; set; } = 10;
}
