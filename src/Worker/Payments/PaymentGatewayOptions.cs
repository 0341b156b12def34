using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Payments;

/// <summary>Section <c>PaymentGateway</c>. An empty <see cref="BaseUrl"/> selects the simulated gateway (test mode).</summary>
public sealed class PaymentGatewayOptions : IValidatableObject
{
    public const string SectionName = "PaymentGateway";

    /// <summary>
    /// An absolute http or https URL, with or without a trailing slash; charges go to <c>charges</c> under it. No
    /// query or fragment (a relative path resolved against one replaces the URL's path), no credentials
    /// (<see cref="ApiKey"/> signs in).
    /// </summary>
    public string? BaseUrl { get; set; }

    /// <summary>Sent as a bearer token when set; from the environment only.</summary>
    public string? ApiKey { get; set; }

    [Range(1, 300)]
    public int TimeoutSeconds { get; set; } = 10;

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        // Neither value is repeated in a message: the URL may hold a password, the key is one.
        if (BaseUrlProblem(BaseUrl) is { } url)
        {
            yield return new ValidationResult($"{SectionName}:{nameof(BaseUrl)} {url}", [nameof(BaseUrl)]);
        }

        // Set, it is sent in every charge's Authorization header, where HttpClient refuses a line break
        // (a secret file's last newline) and anything not ASCII: every payment would fail, not the start.
        if (!string.IsNullOrEmpty(ApiKey) && ApiKey.AsSpan().ContainsAnyExceptInRange('!', '~'))
        {
            yield return new ValidationResult(
                $"{SectionName}:{nameof(ApiKey)} may contain only printable ASCII characters, no spaces or line breaks (it is sent as a bearer token); check for a newline at its end.",
                [nameof(ApiKey)]);
        }
    }

    private static string? BaseUrlProblem(string? url)
    {
        if (string.IsNullOrWhiteSpace(url))
        {
            return null;
        }

        // On Unix a path alone ("/v1") parses as an absolute file: URI, hence the scheme check.
        if (!Uri.TryCreate(url.Trim(), UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            return "must be an absolute http or https URL of the payment gateway, such as https://gateway.example.com/v1/.";
        }

        if (uri.UserInfo.Length > 0)
        {
            return "must not carry credentials: PaymentGateway:ApiKey signs in.";
        }

        // Looked for in the text, so that an empty query or fragment (a bare '?' or '#') counts too.
        return url.AsSpan().IndexOfAny('?', '#') >= 0
            ? "must not have a query or a fragment: the worker appends charges to its path."
            : null;
    }
}
