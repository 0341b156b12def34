using System.Globalization;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Conveyor.Worker.Failures;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// What the TLS handshake of a delivery's connection found wrong with its receiver's certificate, in words
/// an operator acts on ("certificate expired on …", "name mismatch", "untrusted root"). HttpClient reports
/// a refused certificate and a port that does not speak TLS alike (an <c>AuthenticationException</c>), and
/// only the first may pass (the receiver renews or corrects it), so <see cref="WebhookSender"/> asks this.
/// The webhook client's certificate validation (<see cref="Validate"/>) records the problem and keeps the
/// default decision exactly: a certificate is accepted only when the platform finds nothing wrong with it.
/// </summary>
public sealed class ReceiverCertificate
{
    /// <summary>Characters of a certificate's subject kept in a problem's text (it is the remote side's text).</summary>
    public const int MaxSubjectChars = 200;

    private static readonly AsyncLocal<ReceiverCertificate?> CurrentRequest = new();

    private readonly Lock _lock = new();

    private ReceiverCertificate()
    {
    }

    /// <summary>Why the receiver's certificate was refused, once a handshake for this delivery refused it; else null.</summary>
    public string? Problem
    {
        get { lock (_lock) { return field; } }
        private set { lock (_lock) { field = value; } }
    }

    /// <summary>
    /// Starts recording for the request this flow sends next. HttpClient opens a connection for a request in
    /// that request's flow (the attempt it starts then carries the flow with it), and a connection that
    /// fails fails only the request that opened it; the caller's flow, being an async method's, leaves it
    /// behind when it returns.
    /// </summary>
    public static ReceiverCertificate Begin()
    {
        var certificate = new ReceiverCertificate();
        CurrentRequest.Value = certificate;
        return certificate;
    }

    /// <summary>
    /// The webhook client's <see cref="SslClientAuthenticationOptions.RemoteCertificateValidationCallback"/>:
    /// the default decision (none of <see cref="SslPolicyErrors"/>, as SslStream decides without a callback),
    /// with what is wrong recorded for the delivery whose connection it is.
    /// </summary>
    public static bool Validate(object sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (errors == SslPolicyErrors.None)
        {
            return true;
        }

        CurrentRequest.Value?.Problem = Describe(certificate, chain, errors, DateTime.UtcNow);
        return false;
    }

    /// <summary>
    /// <paramref name="errors"/> in words, one phrase each, the chain's problems taken from each of its
    /// certificates: its time of validity (expired on, not valid before), an untrusted root, a chain that
    /// does not reach a root, a revocation; any other status by its name.
    /// </summary>
    public static string Describe(X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors, DateTime utcNow)
    {
        var problems = new List<string>();
        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNotAvailable))
        {
            problems.Add("no certificate presented");
        }

        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
        {
            problems.Add("name mismatch: the certificate is not for the URL's host");
        }

        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateChainErrors))
        {
            var found = new List<string>();
            var elements = chain?.ChainElements.ToList() ?? [];
            for (var i = 0; i < elements.Count; i++)
            {
                found.AddRange(elements[i].ChainElementStatus
                    .Where(s => s.Status != X509ChainStatusFlags.NoError)
                    .Select(s => ChainProblem(s.Status, elements[i].Certificate, isLeaf: i == 0, utcNow)));
            }

            // A chain whose elements say nothing still says what it found as a whole.
            if (found.Count == 0)
            {
                found.AddRange((chain?.ChainStatus ?? [])
                    .Where(s => s.Status != X509ChainStatusFlags.NoError)
                    .Select(s => ChainProblem(s.Status, certificate as X509Certificate2, isLeaf: true, utcNow)));
            }

            problems.AddRange(found.Count > 0 ? found : ["certificate chain not valid"]);
        }

        return string.Join("; ", problems.Distinct());
    }

    private static string ChainProblem(X509ChainStatusFlags status, X509Certificate2? certificate, bool isLeaf, DateTime utcNow)
    {
        var which = isLeaf ? "certificate" : $"issuer certificate \"{HttpFailures.Printable(certificate?.Subject ?? "", MaxSubjectChars)}\"";
        return status switch
        {
            X509ChainStatusFlags.NotTimeValid when certificate is not null && certificate.NotAfter.ToUniversalTime() < utcNow =>
                $"{which} expired on {Moment(certificate.NotAfter)}",
            X509ChainStatusFlags.NotTimeValid when certificate is not null =>
                $"{which} not yet valid before {Moment(certificate.NotBefore)}",
            X509ChainStatusFlags.NotTimeValid => $"{which} expired or not yet valid",
            X509ChainStatusFlags.UntrustedRoot => "untrusted root: self-signed, or issued by an authority this worker does not trust",
            X509ChainStatusFlags.PartialChain => "incomplete chain: an intermediate certificate is missing",
            X509ChainStatusFlags.Revoked => $"{which} revoked",
            _ => $"{which}: {status}",
        };
    }

    private static string Moment(DateTime time) => time.ToUniversalTime().ToString("yyyy-MM-dd HH:mm:ss 'UTC'", CultureInfo.InvariantCulture);
}
