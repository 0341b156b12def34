using Conveyor.ServiceDefaults;
using Microsoft.AspNetCore.Http.Features;

namespace Conveyor.Api.ErrorQueues;

/// <summary>MassTransit's naming of the queues that hold failed (<c>_error</c>) and unconsumable (<c>_skipped</c>) messages.</summary>
public static class ErrorQueueNames
{
    public const string ErrorSuffix = RabbitMqOptions.ErrorQueueSuffix;
    public const string SkippedSuffix = RabbitMqOptions.SkippedQueueSuffix;

    /// <summary>RabbitMQ's limit for a queue name, in UTF-8 bytes.</summary>
    public const int MaxQueueNameBytes = 255;

    /// <summary>
    /// Why <paramref name="name"/> cannot name a queue this Api works with, or null when it can: empty,
    /// longer than RabbitMQ allows, or <c>.</c> / <c>..</c>, which no escaping keeps inside the
    /// management API's URL path segment (they would address the queue listing instead).
    /// </summary>
    public static string? NameProblem(string name) =>
        name.Length == 0 ? "Must not be empty."
        : System.Text.Encoding.UTF8.GetByteCount(name) > MaxQueueNameBytes ? $"Must be at most {MaxQueueNameBytes} bytes long."
        : name is "." or ".." ? "Must be a queue name, not . or .."
        : null;

    /// <summary>
    /// The queue a <c>/api/error-queues/{queue}/…</c> request names. Kestrel decodes every escape in
    /// the path except <c>%2F</c>, so a queue whose name holds a <c>/</c> arrives as <c>a%2Fb</c>, as does
    /// one whose name holds <c>%2F</c> itself (sent as <c>a%252Fb</c>). The raw request target tells the
    /// two apart: the queue is its path's second-to-last segment (every route here ends in an action), decoded once.
    /// </summary>
    public static string FromRoute(HttpContext http, string routeValue)
    {
        if (!routeValue.Contains('%', StringComparison.Ordinal)
            || http.Features.Get<IHttpRequestFeature>()?.RawTarget is not { Length: > 0 } target)
        {
            return routeValue;
        }

        var query = target.IndexOf('?', StringComparison.Ordinal);
        // Routing also matches with a trailing slash.
        var segments = (query < 0 ? target : target[..query]).TrimEnd('/').Split('/');
        return segments.Length >= 2 ? Uri.UnescapeDataString(segments[^2]) : routeValue;
    }

    public static bool IsErrorOrSkipped(string queue) =>
        Kind(queue) is not null && queue.Length > SuffixOf(queue)!.Length;

    /// <summary><c>error</c>, <c>skipped</c>, or null for any other queue.</summary>
    public static string? Kind(string queue) =>
        queue.EndsWith(ErrorSuffix, StringComparison.Ordinal) ? "error"
        : queue.EndsWith(SkippedSuffix, StringComparison.Ordinal) ? "skipped"
        : null;

    /// <summary>The queue whose consumer put the message here: the name without its suffix.</summary>
    public static string SourceQueueOf(string queue) =>
        SuffixOf(queue) is { } suffix ? queue[..^suffix.Length] : queue;

    /// <summary>
    /// The queue a faulted message was consumed from: the last path segment of
    /// <c>MT-Fault-InputAddress</c> (<c>rabbitmq://host/vhost/queue?...</c>), else the error queue's source.
    /// </summary>
    public static string OriginalQueueOf(string? inputAddress, string errorQueue)
    {
        if (inputAddress is not null
            && Uri.TryCreate(inputAddress, UriKind.Absolute, out var address)
            && address.Segments.Length > 0)
        {
            var last = Uri.UnescapeDataString(address.Segments[^1].TrimEnd('/'));
            if (last.Length > 0 && !IsErrorOrSkipped(last))
            {
                return last;
            }
        }

        return SourceQueueOf(errorQueue);
    }

    private static string? SuffixOf(string queue) =>
        queue.EndsWith(ErrorSuffix, StringComparison.Ordinal) ? ErrorSuffix
        : queue.EndsWith(SkippedSuffix, StringComparison.Ordinal) ? SkippedSuffix
        : null;
}
