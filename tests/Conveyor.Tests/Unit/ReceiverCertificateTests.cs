using System.Net.Security;
using Conveyor.Tests.Fakes;
using Conveyor.Worker.Webhooks;

namespace Conveyor.Tests.Unit;

/// <summary>
/// The webhook client's certificate validation records why a certificate is refused and decides as the
/// default validation does: only a certificate the platform finds nothing wrong with is accepted.
/// </summary>
public sealed class ReceiverCertificateTests
{
    [Theory]
    [InlineData(SslPolicyErrors.None, true)]
    [InlineData(SslPolicyErrors.RemoteCertificateNotAvailable, false)]
    [InlineData(SslPolicyErrors.RemoteCertificateNameMismatch, false)]
    [InlineData(SslPolicyErrors.RemoteCertificateChainErrors, false)]
    [InlineData(SslPolicyErrors.RemoteCertificateNameMismatch | SslPolicyErrors.RemoteCertificateChainErrors, false)]
    public async Task The_decision_is_the_default_one_and_a_refusal_is_recorded_for_the_delivery(SslPolicyErrors errors, bool accepted)
    {
        // In an async method of its own, as WebhookSender's flow is.
        var (decision, problem) = await ValidateInOwnFlowAsync(errors);

        Assert.Equal(accepted, decision);
        Assert.Equal(accepted, problem is null);
    }

    [Fact]
    public void A_refusal_without_a_chain_still_says_why()
    {
        var now = DateTime.UtcNow;
        using var leaf = RawTcpReceiver.SelfSignedCertificate(null, now.AddDays(-1), now.AddDays(1));

        Assert.Equal("no certificate presented", ReceiverCertificate.Describe(null, null, SslPolicyErrors.RemoteCertificateNotAvailable, now));
        Assert.Equal("certificate chain not valid", ReceiverCertificate.Describe(leaf, null, SslPolicyErrors.RemoteCertificateChainErrors, now));
        Assert.Equal(
            "name mismatch: the certificate is not for the URL's host",
            ReceiverCertificate.Describe(leaf, null, SslPolicyErrors.RemoteCertificateNameMismatch, now));
    }

    private static async Task<(bool Decision, string? Problem)> ValidateInOwnFlowAsync(SslPolicyErrors errors)
    {
        await Task.Yield();
        var certificate = ReceiverCertificate.Begin();
        var decision = ReceiverCertificate.Validate(new object(), null, null, errors);
        return (decision, certificate.Problem);
    }
}
