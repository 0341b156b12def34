using System.Net.Http.Headers;

namespace Conveyor.Worker.Failures;

/// <summary>Turns a remote side's non-success answer into a transient or permanent failure.</summary>
public static class HttpFailures
{
    public static async Task EnsureSuccessAsync(HttpResponseMessage response, string what, CancellationToken cancellationToken)
    {
        if (response.IsSuccessStatusCode)
        {
            return;
        }

        var status = response.StatusCode;
        var body = await ReadSnippetAsync(response, cancellationToken);
        var message = $"{what} answered {(int)status} {status}: {body}";
        if (FailureClassifier.IsTransientStatus(status))
        {
            throw new TransientFailureException(message, RetryAfter(response.Headers.RetryAfter));
        }

        throw new PermanentFailureException(message);
    }

    private static TimeSpan? RetryAfter(RetryConditionHeaderValue? header) => header switch
    {
        { Delta: { } delta } => delta,
        { Date: { } date } => date - DateTimeOffset.UtcNow is { } wait && wait > TimeSpan.Zero ? wait : TimeSpan.Zero,
        _ => null,
    };

    private static async Task<string> ReadSnippetAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        try
        {
            var text = await response.Content.ReadAsStringAsync(cancellationToken);
            return text.Length <= 500 ? text : text[..500];
        }
        catch (HttpRequestException)
        {
            return "(no body)";
        }
    }

    public static bool IsTimeout(Exception exception, CancellationToken callerToken) =>
        exception is TaskCanceledException && !callerToken.IsCancellationRequested;
}
