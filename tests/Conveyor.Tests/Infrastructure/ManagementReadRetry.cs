using System.Net;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Asks a read of the management API again when the broker answered it with a server error.
/// RabbitMQ's listing of connections (and queues) can answer 500 when one of them closes while it is
/// being listed, which the reset between tests does right after the earlier test's hosts stop; the
/// next read lists the broker as it is. Only GETs are asked again (they change nothing), at most
/// <see cref="Attempts"/> times; the last answer is returned as it is, so a broker that keeps failing
/// still fails the test.
/// </summary>
public sealed class ManagementReadRetry(TimeSpan pause) : DelegatingHandler
{
    public const int Attempts = 4;

    public ManagementReadRetry() : this(TimeSpan.FromMilliseconds(250))
    {
    }

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        for (var attempt = 1; ; attempt++)
        {
            var response = await base.SendAsync(request, cancellationToken);
            if (request.Method != HttpMethod.Get || attempt == Attempts || !IsServerError(response.StatusCode))
            {
                return response;
            }

            response.Dispose();
            await Task.Delay(pause, cancellationToken);
        }
    }

    private static bool IsServerError(HttpStatusCode status) => (int)status is >= 500 and <= 599;
}
