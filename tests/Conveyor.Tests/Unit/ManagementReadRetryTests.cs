using System.Net;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Unit;

/// <summary>
/// The tests' management client reads again after a server error (RabbitMQ answers 500 to a listing
/// of connections when one closes meanwhile), but changes nothing twice and gives up in the end.
/// </summary>
public sealed class ManagementReadRetryTests
{
    [Fact]
    public async Task A_read_answered_with_a_server_error_is_read_again()
    {
        var broker = new Answers(HttpStatusCode.InternalServerError, HttpStatusCode.OK);
        using var client = ClientOf(broker);

        using var response = await client.GetAsync("http://broker/api/vhosts/v/connections");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(2, broker.Asked);
    }

    [Fact]
    public async Task A_broker_that_keeps_failing_still_fails_the_read()
    {
        var broker = new Answers(HttpStatusCode.InternalServerError);
        using var client = ClientOf(broker);

        using var response = await client.GetAsync("http://broker/api/vhosts/v/connections");

        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
        Assert.Equal(ManagementReadRetry.Attempts, broker.Asked);
    }

    [Theory]
    [InlineData("DELETE", HttpStatusCode.InternalServerError)]
    [InlineData("PUT", HttpStatusCode.ServiceUnavailable)]
    [InlineData("GET", HttpStatusCode.NotFound)]
    public async Task A_change_or_an_answer_that_is_no_server_error_is_sent_once(string method, HttpStatusCode status)
    {
        var broker = new Answers(status, HttpStatusCode.OK);
        using var client = ClientOf(broker);

        using var response = await client.SendAsync(new HttpRequestMessage(new HttpMethod(method), "http://broker/api/queues/v/q"));

        Assert.Equal(status, response.StatusCode);
        Assert.Equal(1, broker.Asked);
    }

    private static HttpClient ClientOf(Answers broker) =>
        new(new ManagementReadRetry(TimeSpan.Zero) { InnerHandler = broker });

    /// <summary>Answers each request with the next status given, the last one from then on.</summary>
    private sealed class Answers(params HttpStatusCode[] statuses) : HttpMessageHandler
    {
        public int Asked { get; private set; }

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var status = statuses[Math.Min(Asked, statuses.Length - 1)];
            Asked++;
            return Task.FromResult(new HttpResponseMessage(status));
        }
    }
}
