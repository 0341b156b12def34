using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Unit;

/// <summary>
/// Where the Api sends its management API requests (<see cref="RabbitMqOptions.ManagementApiAddress"/>), and
/// the <c>RabbitMq:ManagementUrl</c> values the options refuse at start.
/// </summary>
public sealed class ManagementAddressTests
{
    [Fact]
    public void By_default_the_address_is_the_host_and_management_port()
    {
        Assert.Equal("http://127.0.0.1:15672/api/", new RabbitMqOptions().ManagementApiAddress().AbsoluteUri);
        Assert.Equal(
            "http://rabbit.internal:15671/api/",
            new RabbitMqOptions { Host = "rabbit.internal", ManagementPort = 15671 }.ManagementApiAddress().AbsoluteUri);
    }

    [Theory]
    [InlineData("::1", "http://[::1]:15672/api/")]
    [InlineData("fd00::5", "http://[fd00::5]:15672/api/")]
    public void An_IPv6_literal_host_is_put_in_brackets(string host, string expected) =>
        Assert.Equal(expected, new RabbitMqOptions { Host = host }.ManagementApiAddress().AbsoluteUri);

    [Theory]
    [InlineData("https://ops.example.com/rabbitmq")]
    [InlineData("https://ops.example.com/rabbitmq/")]
    [InlineData(" https://ops.example.com/rabbitmq/ ")]
    public void A_management_url_with_a_path_prefix_puts_the_api_under_it(string url)
    {
        var address = new RabbitMqOptions { Host = "ignored", ManagementPort = 1, ManagementUrl = url }.ManagementApiAddress();

        Assert.Equal("https://ops.example.com/rabbitmq/api/", address.AbsoluteUri);
        // What the clients do with it: a relative request resolves under the prefix.
        Assert.Equal("https://ops.example.com/rabbitmq/api/queues/%2F", new Uri(address, "queues/%2F").AbsoluteUri);
    }

    [Theory]
    [InlineData("https://ops.example.com/rabbitmq/api", "https://ops.example.com/rabbitmq/api/")]
    [InlineData("http://rabbit.internal:15672/api/", "http://rabbit.internal:15672/api/")]
    public void A_management_url_that_is_already_the_api_is_used_as_it_is(string url, string expected) =>
        Assert.Equal(expected, new RabbitMqOptions { ManagementUrl = url }.ManagementApiAddress().AbsoluteUri);

    [Theory]
    [InlineData("https://rabbit.example.com:15671", "https://rabbit.example.com:15671/api/")]
    [InlineData("https://rabbit.example.com/", "https://rabbit.example.com/api/")]
    [InlineData("http://[fd00::5]:15672", "http://[fd00::5]:15672/api/")]
    public void A_management_url_without_a_path_puts_the_api_at_its_root(string url, string expected) =>
        Assert.Equal(expected, new RabbitMqOptions { ManagementUrl = url }.ManagementApiAddress().AbsoluteUri);

    [Theory]
    [InlineData("ops.example.com/rabbitmq")]
    [InlineData("/rabbitmq")]
    [InlineData("rabbitmq/")]
    [InlineData("amqp://rabbit.example.com:5672/")]
    [InlineData("ftp://rabbit.example.com/")]
    [InlineData("https://rabbit.example.com/rabbitmq?vhost=x")]
    [InlineData("https://rabbit.example.com/rabbitmq/#/queues")]
    [InlineData("https://admin:s3cret-pass@rabbit.example.com/rabbitmq/")]
    public void A_management_url_that_is_not_a_plain_http_url_is_refused_naming_the_setting(string url)
    {
        var refused = Assert.Throws<OptionsValidationException>(() => Options(url));

        Assert.Contains(RabbitMqOptions.ManagementUrlSetting, refused.Message, StringComparison.Ordinal);
        Assert.Equal("RabbitMq:ManagementUrl", RabbitMqOptions.ManagementUrlSetting);
        Assert.DoesNotContain("s3cret", refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("http://127.0.0.1:15672")]
    [InlineData("https://ops.example.com/rabbitmq/")]
    public void Unset_or_an_absolute_http_url_is_accepted(string? url) =>
        Assert.Equal(url, Options(url).ManagementUrl);

    [Theory]
    [InlineData("amqp://rabbit.example.com")]
    [InlineData("http://rabbit:5672")]
    [InlineData("rabbit.example.com:5672")]
    [InlineData("rabbit example")]
    [InlineData("rabbit.example.com\n")]
    public void A_broker_host_that_is_not_a_host_name_or_address_is_refused_naming_the_setting(string host)
    {
        var refused = Assert.Throws<OptionsValidationException>(() => Options(null, host));

        Assert.Contains("RabbitMq:Host must be a host name or an IP address", refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData("rabbitmq")]
    [InlineData("rabbitmq.conveyor.svc.cluster.local")]
    [InlineData("::1")]
    public void A_broker_host_name_or_address_is_accepted(string host) =>
        Assert.Equal(host, Options(null, host).Host);

    /// <summary>The options as a process binds and validates them.</summary>
    private static RabbitMqOptions Options(string? managementUrl, string? host = null)
    {
        var settings = new Dictionary<string, string?> { [RabbitMqOptions.ManagementUrlSetting] = managementUrl };
        if (host is not null)
        {
            settings["RabbitMq:Host"] = host;
        }

        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(settings)
            .Build();
        var services = new ServiceCollection().AddSingleton<IConfiguration>(configuration);
        services.AddRabbitMqOptions(configuration);
        using var provider = services.BuildServiceProvider();
        return provider.GetRequiredService<IOptions<RabbitMqOptions>>().Value;
    }
}
