namespace Conveyor.Contracts;

/// <summary>The job kinds as they appear in URLs and in the jobs table.</summary>
public static class JobKinds
{
    public const string ChargePayment = "charge-payment";
    public const string DeliverWebhook = "deliver-webhook";
    public const string GenerateReport = "generate-report";

    public static IReadOnlyList<string> All { get; } = [ChargePayment, DeliverWebhook, GenerateReport];
}
